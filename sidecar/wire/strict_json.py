"""Strict JSON: the one parser for request bodies and backend replies, and the value check.

Python's ``json`` accepts more than JSON (RFC 8259) allows, and each extra is a value the
gateway cannot hash (RFC 8785), record or answer with, so every one is refused here:

- ``NaN``, ``Infinity``, ``-Infinity``;
- numbers that overflow a float (``1e400`` would become ``inf``; an integer of 309 or more
  digits cannot be converted);
- lone UTF-16 surrogates (``"\\ud800"`` escapes, which ``json.loads`` turns into a string
  no UTF-8 encoder can write back; a proper pair is fine);
- nesting deeper than ``MAX_DEPTH`` (64) arrays/objects.

``StrictJsonError`` (a ``ValueError``) says which rule was broken and, where it can,
``param``: the top-level field the bad value sits under. It never echoes the value.

Cost (every request body passes here, on the event loop below 64 KiB): the text is
decoded once, by the C decoder, whose only hook (``parse_constant``) runs only for
NaN/Infinity. Then one iterative walk, level by level, checks the rest: depth (levels),
overflow (a float that overflowed is ``inf``; a list of numbers is summed in C, which
raises on an integer no float can hold) and lone surrogates (only when the raw text has a
``\\uD800``-``\\uDFFF`` escape, and then only non-ASCII strings are encoded). An array
of numbers costs no Python step per number. ``param`` costs nothing until a refusal: then
the top-level fields are walked again one by one; a refusal the decoder raises (NaN, an
integer past ``int``'s 4300 digits, C recursion) is named by decoding member by member,
which an object over 64 KiB does in the first place, so it is never decoded twice.
Measured: about 1.0-1.25x ``json.loads`` on a 9.5 MB embeddings body, whatever it holds,
and 1.5-1.7x on chat bodies (the walk is one Python step per value in a container).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

from ..errors import StrictJsonError

MAX_DEPTH = 64
_SAFE_INTEGER = 2**53 - 1
_MEMBERWISE = 64 * 1024
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, position: int) -> int:
    """Where the JSON whitespace starting at ``position`` ends (the pattern always matches)."""
    found = _WHITESPACE.match(text, position)
    return found.end() if found is not None else position


_OVERFLOW = "a number overflows a float"
_NON_FINITE = "NaN and Infinity are not allowed in JSON"
_UNSAFE = "an integer is outside +-(2**53 - 1), which cannot be hashed"


class _NonFinite(ValueError):
    pass


class _Malformed(Exception):
    """The member-by-member decode met a syntax error: the whole-text decode words it."""


def _refuse_constant(name: str) -> Any:
    raise _NonFinite(f"{name} is not allowed in JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def loads(data: bytes | str) -> Any:
    """Parse ``data`` (UTF-8 bytes, or text) as strict JSON, or raise ``StrictJsonError``."""
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:
            raise StrictJsonError("text contains a lone UTF-16 surrogate") from None
    else:
        raw = data if type(data) is bytes else bytes(data)
    try:
        text = raw.decode("utf-8")  # strict: no encoded surrogates, no UTF-16 or -32
    except UnicodeDecodeError:
        raise StrictJsonError("JSON is not valid UTF-8") from None
    value = _parse(text)
    # Only a \uD800-\uDFFF escape makes a surrogate (strict UTF-8 cannot carry one).
    strings = b"\\" in raw and _SURROGATE_ESCAPE.search(raw) is not None
    _walk_top(value, strings, _OVERFLOW, False)
    return value


def _parse(text: str) -> Any:
    """The C decoder; what it refuses while decoding is found again member by member.

    A large object is decoded member by member in the first place (the per-member cost
    is nothing there), so a refusal in it never costs a second decode.
    """
    if len(text) > _MEMBERWISE:
        try:
            members = _decode_members(text)
        except _Malformed:
            members = None  # the whole-text decode below words the syntax error
        if members is not None:
            return members
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise StrictJsonError(f"not valid JSON: {_position(exc)}") from None
    except (ValueError, RecursionError) as exc:
        refused = exc
    with contextlib.suppress(_Malformed):
        _decode_members(text)  # raises the refusal with its top-level key as param
    raise StrictJsonError(_refusal(refused)) from None


def _refusal(exc: BaseException) -> str:
    if isinstance(exc, _NonFinite):
        return str(exc)
    if isinstance(exc, RecursionError):
        return f"JSON is nested deeper than {MAX_DEPTH} levels"
    return _OVERFLOW  # int() refuses a literal past 4300 digits: far past 2**1024


def _decode_members(text: str) -> dict[str, Any] | None:
    """A top-level object decoded one member at a time by the C scanner, else ``None``.

    This is ``json``'s own object grammar; what it refuses while decoding a member is
    raised with that member's key as ``param``. Any syntax error is ``_Malformed``: the
    caller decodes the whole text again, so the message is ``json``'s own.
    """
    end = _skip(text, 0)
    if text[end : end + 1] != "{":
        return None
    members: dict[str, Any] = {}
    end = _skip(text, end + 1)
    if text[end : end + 1] == "}":
        end += 1
    else:
        while True:
            if text[end : end + 1] != '"':
                raise _Malformed
            try:
                key, end = _SCAN(text, end)
            except (StopIteration, ValueError):
                raise _Malformed from None
            end = _skip(text, end)
            if text[end : end + 1] != ":":
                raise _Malformed
            end = _skip(text, end + 1)
            try:
                members[key], end = _SCAN(text, end)
            except (StopIteration, json.JSONDecodeError):
                raise _Malformed from None
            except (ValueError, RecursionError) as exc:
                raise StrictJsonError(_refusal(exc), _name(key)) from None
            end = _skip(text, end)
            delimiter = text[end : end + 1]
            end = _skip(text, end + 1)
            if delimiter == "}":
                break
            if delimiter != ",":
                raise _Malformed
    if end != len(text):
        raise _Malformed
    return members


def loads_reply(data: bytes) -> Any:
    """A backend's reply: only NaN/Infinity are refused (free: ``parse_constant``).

    Replies can be megabytes of floats (embeddings), and the client gets the backend's
    bytes, not a re-encoding, so the other checks are not worth their cost here; a tool's
    result still passes ``check_value`` in the tool bus.
    """
    try:
        return _DECODER.decode(bytes(data).decode("utf-8"))
    except _NonFinite as exc:
        raise StrictJsonError(str(exc)) from None
    except RecursionError:
        raise StrictJsonError("JSON is nested too deeply") from None
    except ValueError as exc:  # also UnicodeDecodeError
        raise StrictJsonError(f"not valid JSON: {_position(exc)}") from None


def check_value(value: Any, *, safe_integers: bool = False) -> None:
    """Refuse a Python value JSON could not carry (the same rules as ``loads``).

    ``safe_integers`` also refuses integers outside +-(2**53 - 1), which RFC 8785 cannot
    canonicalize (the tool bus hashes arguments with it).
    """
    _walk_top(value, True, _NON_FINITE, safe_integers)


def is_strict(value: Any) -> bool:
    """Whether ``value`` passes ``check_value`` (for results that must not be refused)."""
    try:
        check_value(value)
    except StrictJsonError:
        return False
    return True


def _walk_top(value: Any, strings: bool, non_finite: str, safe_integers: bool) -> None:
    """``_walk`` a whole value; on a refusal, walk a top-level object again per field.

    The second walk only names ``param`` (no worse than the first: a walk costs a
    fraction of a decode).
    """
    try:
        _walk(value, 0, strings, non_finite, safe_integers)
    except _Refused as exc:
        refused, param = exc, None
        if isinstance(value, dict):
            for key, child in value.items():
                try:
                    _walk(child, 1, strings, non_finite, safe_integers)
                except _Refused as inner:
                    refused, param = inner, _name(key)
                    break
        raise StrictJsonError(str(refused), param) from None


class _Refused(ValueError):
    """A rule broken inside ``_walk``; the caller says where."""


def _walk(value: Any, depth: int, strings: bool, non_finite: str, safe_integers: bool) -> None:
    """The one check of ``value`` (an item of a container at ``depth - 1``), by levels.

    One Python step per item of a container (type, and a push if it is a container),
    never a call: depth counts levels; the level's non-ASCII strings are encoded once
    (only if ``strings``; ``isascii`` is O(1)), its numbers summed once in C (looked at
    one by one only if the sum fails). A list whose first item is a number is summed on
    its own in C (``_numbers_fine``), so an array of numbers costs no Python step per item.
    """
    level: list[Any] = [[value]]
    depth -= 1
    while level:
        if depth >= MAX_DEPTH:
            raise _Refused(f"JSON is nested deeper than {MAX_DEPTH} levels")
        below: list[Any] = []
        push = below.append
        numbers: list[Any] = []
        wide: list[str] = []
        dicts: list[Any] = []
        others: list[Any] = []
        for item in level:
            children: Iterable[Any]
            if type(item) is list:
                if not item or (type(item[0]) in _NUMBERS and _numbers_fine(item, safe_integers)):
                    continue
                children = item
            elif isinstance(item, dict):
                if strings:
                    dicts.append(item)
                children = item.values()
            else:
                children = item
            for child in children:
                kind = type(child)
                if kind is str:
                    if strings and not child.isascii():
                        wide.append(child)
                elif kind is dict or kind is list:
                    push(child)
                elif kind is float or kind is int:
                    numbers.append(child)
                elif kind is not bool and child is not None:
                    others.append(child)
        for other in others:  # subclasses, from a tool; anything else is not JSON's
            if isinstance(other, dict | list):
                push(other)
            elif isinstance(other, str):
                wide.append(other)
            elif isinstance(other, float | int) and not isinstance(other, bool):
                numbers.append(other)
        if dicts:
            _check_keys(dicts)
        if wide and _has_surrogate("".join(wide)):
            raise _Refused("a string contains a lone UTF-16 surrogate")
        if numbers and not _numbers_fine(numbers, safe_integers):
            _check_numbers(numbers, non_finite, safe_integers)
        level = below
        depth += 1


_NUMBERS = frozenset({int, float})


def _check_keys(dicts: list[dict[Any, Any]]) -> None:
    keys = list(chain.from_iterable(dicts))
    try:
        plain = all(map(str.isascii, keys))
    except TypeError:  # a key that is not text, from a tool: judge the text ones
        keys = [key for key in keys if isinstance(key, str)]
        plain = all(map(str.isascii, keys))
    if not plain and _has_surrogate("".join(keys)):
        raise _Refused("a key contains a lone UTF-16 surrogate")


def _numbers_fine(items: list[Any], safe_integers: bool) -> bool:
    """True if ``items`` are all finite numbers a float can hold; False: look closer.

    ``sum`` runs in C: it raises ``TypeError`` on a non-number and ``OverflowError`` on
    an integer past a float, and ends as inf/NaN if an item is one (or the total is
    merely large: then ``_check_numbers`` looks one by one, and finds nothing).
    """
    try:
        total = sum(items, 0.0)
    except (TypeError, OverflowError):
        return False
    if not math.isfinite(total):
        return False
    return not safe_integers or -_SAFE_INTEGER <= min(items) <= max(items) <= _SAFE_INTEGER


def _check_numbers(numbers: list[Any], non_finite: str, safe_integers: bool) -> None:
    """Numbers one by one (only after their sum failed)."""
    for number in numbers:
        if isinstance(number, float):
            if not math.isfinite(number):
                raise _Refused(non_finite)
        elif safe_integers and abs(number) > _SAFE_INTEGER:
            raise _Refused(_UNSAFE)
        elif number.bit_length() > 1023 and _overflows(number):
            raise _Refused(_OVERFLOW)


def _overflows(number: int) -> bool:
    try:
        float(number)
    except OverflowError:
        return True
    return False


def _has_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _name(key: Any) -> str | None:
    """A top-level key as a ``param``: short, and only if it is plain text."""
    if not isinstance(key, str) or _has_surrogate(key):
        return None
    return key if len(key) <= 64 and key.isprintable() else None


def _position(exc: ValueError) -> str:
    """Where the syntax error is (line and column), never the text around it."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return "malformed"
