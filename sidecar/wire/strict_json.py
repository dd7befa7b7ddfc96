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

Cost: ``parse_constant`` runs only for NaN/Infinity. Numbers are checked one by one only
when the raw bytes could hold one that overflows (a run of 90+ digits, or an exponent of
3+ digits: below both, a number is under 1e189); the depth walk (containers only) runs
only with more brackets than ``MAX_DEPTH``, the string walk only with a
``\\uD800``-``\\uDFFF`` escape. So a chat body or an embeddings reply costs about what
``json.loads`` costs.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..errors import StrictJsonError

MAX_DEPTH = 64
# 2**1024 has 309 digits: an integer literal this long or longer may overflow a float.
_LONG_INT_DIGITS = 309
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Digits become "0", e/E "e", "+" stays, everything else a space: then a number that may
# overflow shows as a run of 90 "0"s or as "e000" / "e+000" (a 3-digit exponent). (Below
# 100 bytes, ``in`` keeps its fast search; two-way search is slow on runs of "0".)
_NUMBER_SHAPE = bytes(
    ord("0") if 48 <= i <= 57 else ord("e") if i in (69, 101) else i if i == 43 else 32
    for i in range(256)
)
_SUSPECT = (b"0" * 90, b"e000", b"e+000")
_CONTAINERS = frozenset({dict, list})


class _NonFinite(ValueError):
    pass


class _Bad:
    """A placeholder for a refused number while looking for where it sits."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _refuse_constant(name: str) -> Any:
    raise _NonFinite(f"{name} is not allowed in JSON")


def _strict_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NonFinite("a number overflows a float")
    return value


def _strict_int(text: str) -> int:
    if _int_overflows(text):
        raise _NonFinite("a number overflows a float")
    return int(text)


def _int_overflows(text: str) -> bool:
    digits = len(text.lstrip("-"))
    return digits > _LONG_INT_DIGITS or (digits == _LONG_INT_DIGITS and _overflows(int(text)))


def _mark_constant(name: str) -> _Bad:
    return _Bad(f"{name} is not allowed in JSON")


def _mark_float(text: str) -> float | _Bad:
    value = float(text)
    return _Bad("a number overflows a float") if math.isinf(value) else value


def _mark_int(text: str) -> int | _Bad:
    if _int_overflows(text):
        return _Bad("a number overflows a float")
    return int(text)


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_CHECKING = json.JSONDecoder(
    parse_constant=_refuse_constant, parse_float=_strict_float, parse_int=_strict_int
)
_MARKING = json.JSONDecoder(
    parse_constant=_mark_constant, parse_float=_mark_float, parse_int=_mark_int
)


def loads(data: bytes | str) -> Any:
    """Parse ``data`` (UTF-8 bytes, or text) as strict JSON, or raise ``StrictJsonError``."""
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:
            raise StrictJsonError("text contains a lone UTF-16 surrogate") from None
    else:
        raw = bytes(data)
    try:
        text = raw.decode("utf-8")  # strict: no encoded surrogates, no UTF-16 or -32
    except UnicodeDecodeError:
        raise StrictJsonError("JSON is not valid UTF-8") from None
    shape = raw.translate(_NUMBER_SHAPE)
    suspect = any(pattern in shape for pattern in _SUSPECT)
    try:
        value = (_CHECKING if suspect else _DECODER).decode(text)
    except _NonFinite as exc:
        raise StrictJsonError(str(exc), _where_bad(text)) from None
    except RecursionError:
        raise StrictJsonError(f"JSON is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise StrictJsonError(f"not valid JSON: {_position(exc)}") from None
    if _SURROGATE_ESCAPE.search(raw):
        check_value(value)
    elif raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        _check_depth(value)
    return value


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


def _check_depth(value: Any) -> None:
    """``MAX_DEPTH``, looking only at containers (a list of numbers is skipped in C)."""
    stack: list[tuple[Any, int, str | None]] = [(value, 0, None)]
    while stack:
        item, depth, param = stack.pop()
        if depth >= MAX_DEPTH:
            raise StrictJsonError(f"JSON is nested deeper than {MAX_DEPTH} levels", param)
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(child, dict | list):
                    stack.append((child, depth + 1, param or _name(key)))
        elif not _CONTAINERS.isdisjoint(map(type, item)):
            stack.extend((c, depth + 1, param) for c in item if isinstance(c, dict | list))


def check_value(value: Any, *, safe_integers: bool = False) -> None:
    """Refuse a Python value JSON could not carry (the same rules as ``loads``).

    ``safe_integers`` also refuses integers outside +-(2**53 - 1), which RFC 8785 cannot
    canonicalize (the tool bus hashes arguments with it).
    """
    stack: list[tuple[Any, int, str | None]] = [(value, 0, None)]
    while stack:
        item, depth, param = stack.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise StrictJsonError(f"JSON is nested deeper than {MAX_DEPTH} levels", param)
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str) and _has_surrogate(key):
                        raise StrictJsonError(
                            "a key contains a lone UTF-16 surrogate", param or _name(key)
                        )
                    stack.append((child, depth + 1, param or _name(key)))
            else:
                stack.extend((child, depth + 1, param) for child in item)
        elif isinstance(item, str):
            if _has_surrogate(item):
                raise StrictJsonError("a string contains a lone UTF-16 surrogate", param)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise StrictJsonError("NaN and Infinity are not allowed in JSON", param)
        elif isinstance(item, int) and not isinstance(item, bool):
            if safe_integers and abs(item) > 2**53 - 1:
                raise StrictJsonError(
                    "an integer is outside +-(2**53 - 1), which cannot be hashed", param
                )
            if item.bit_length() > 1023 and _overflows(item):
                raise StrictJsonError("a number overflows a float", param)


def is_strict(value: Any) -> bool:
    """Whether ``value`` passes ``check_value`` (for results that must not be refused)."""
    try:
        check_value(value)
    except StrictJsonError:
        return False
    return True


def _overflows(number: int) -> bool:
    try:
        float(number)
    except OverflowError:
        return True
    return False


def _has_surrogate(text: str) -> bool:
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


def _where_bad(text: str) -> str | None:
    """The top-level field of the first refused number (parsing again, marking them)."""
    try:
        value = _MARKING.decode(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    for key, child in value.items():
        if _contains_bad(child):
            return _name(key)
    return None


def _contains_bad(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Bad):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _position(exc: ValueError) -> str:
    """Where the syntax error is (line and column), never the text around it."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return "malformed"
