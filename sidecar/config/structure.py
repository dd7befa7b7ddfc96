"""The structural rules of a config file, checked against ``gateway.schema.json``.

Every key, type, range, enum and default lives in that one JSON Schema (draft 2020-12),
shipped in the package and named by ``gateway.yaml``'s first line so an editor completes
and checks keys too. This module runs it and turns each failure into a ``ConfigIssue``
with the key path and line of the value at fault, in the admin's words: a schema node's
``x-messages`` gives the wording for a failed keyword (``"*"`` for any keyword), else a
generic phrase per keyword; an unknown key lists the allowed ones and the closest match.

YAML and JSON differ in one place: YAML has ``.nan`` and ``.inf``; JSON numbers are
finite, so here a non-finite float is not a number. Validators are built once.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, cast

import jsonschema
from jsonschema.protocols import Validator

from .issues import Issues, join

SCHEMA_FILE = "gateway.schema.json"
SCHEMA_PATH = Path(__file__).with_name(SCHEMA_FILE)  # for editors: the installed file
# What ``check`` can validate: the whole gateway.yaml, or one of the schema's ``$defs``.
GATEWAY = ""
BACKEND = "backend"
TOOLS_FILE = "toolsFile"
AGENTS_FILE = "agentsFile"

_TYPE_WORDS = {
    "object": "must be a mapping",
    "array": "must be a list",
    "string": "must be a non-empty string",
    "integer": "must be an integer",
    "number": "must be a number",
    "boolean": "must be true or false",
}


@functools.cache
def schema() -> dict[str, Any]:
    """The JSON Schema document of ``gateway.yaml`` (parsed once)."""
    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


_JSON_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER


def _finite_number(checker: Any, instance: Any) -> bool:
    return _JSON_TYPES.is_type(instance, "number") and not _non_finite(instance)


def _finite_integer(checker: Any, instance: Any) -> bool:
    return _JSON_TYPES.is_type(instance, "integer") and not _non_finite(instance)


def _non_finite(instance: Any) -> bool:
    return isinstance(instance, float) and not math.isfinite(instance)


_ConfigValidator: Any = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator,
    type_checker=_JSON_TYPES.redefine_many({"number": _finite_number, "integer": _finite_integer}),
)


@functools.cache
def _validator(definition: str) -> Validator:
    document = schema()
    if definition == GATEWAY:
        validator: Validator = _ConfigValidator(document)
    else:
        validator = _ConfigValidator({"$defs": document["$defs"], "$ref": f"#/$defs/{definition}"})
    return validator


def check(instance: Any, issues: Issues, definition: str = GATEWAY, at: str = "") -> None:
    """Report every structural problem of ``instance`` (found at key path ``at``)."""
    for error in _validator(definition).iter_errors(instance):
        for path, message in _describe(error, definition):
            issues.error(_prefixed(at, path), message)


def _prefixed(at: str, path: str) -> str:
    if not at:
        return path
    return f"{at}{path}" if not path or path.startswith("[") else f"{at}.{path}"


def _describe(error: jsonschema.ValidationError, definition: str) -> Iterator[tuple[str, str]]:
    """(key path, message) for one schema failure."""
    steps = list(error.absolute_path)
    path = _path(steps)
    nodes, parents = _nodes_at(definition, steps)
    keyword = str(error.validator)
    if keyword == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted({key for node in nodes for key in node.get("properties", {})})
        for key in error.instance:
            if key not in allowed:
                yield join(path, key), _unknown_key(key, allowed)
        return
    if keyword == "required" and isinstance(error.instance, dict):
        for key in cast(list[str], error.validator_value):
            if key not in error.instance:
                yield join(path, key), _worded(nodes, keyword) or "is required"
        return
    if keyword == "propertyNames":  # not raised itself: its subschema's errors name the key
        return
    if _via_property_names(error):
        names = [node["propertyNames"] for node in nodes if "propertyNames" in node]
        template = _worded(names, keyword) or _generic(error)
        yield join(path, str(error.instance)), _format(template, error)
        return
    if keyword == "type" and _non_finite(error.instance):
        yield path, "must be a finite number (not NaN or infinity)"
        return
    message = _worded(nodes, keyword)
    if message is None and steps and isinstance(steps[-1], int):
        # A bad item of a list is the list's problem, as the list's own wording says.
        parent = _worded(parents, "*")
        if parent is not None:
            yield _path(steps[:-1]), parent
            return
    yield path, _format(message or _generic(error), error)


def _format(template: str, error: jsonschema.ValidationError) -> str:
    return template.format(value=error.instance, allowed=_allowed(error.validator_value))


def _via_property_names(error: jsonschema.ValidationError) -> bool:
    return "propertyNames" in error.relative_schema_path


def _unknown_key(key: str, allowed: Sequence[str]) -> str:
    message = f"unknown key (expected one of: {', '.join(allowed)})"
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f"{message}; did you mean {close[0]!r}?" if close else message


def _worded(nodes: Sequence[dict[str, Any]], keyword: str) -> str | None:
    """The wording the schema gives for ``keyword`` (or any keyword) at these nodes.

    ``required`` names a missing child, so only its own wording fits, not ``"*"``."""
    for wanted in (keyword,) if keyword == "required" else (keyword, "*"):
        for node in nodes:
            message = node.get("x-messages", {}).get(wanted)
            if message is not None:
                return str(message)
    return None


def _generic(error: jsonschema.ValidationError) -> str:
    keyword, expected = error.validator, error.validator_value
    if keyword == "type":
        kinds = [expected] if isinstance(expected, str) else list(cast(list[str], expected))
        words = [_TYPE_WORDS.get(kind) for kind in kinds if kind != "null"]
        return words[0] if len(words) == 1 and words[0] else f"must be of type {_allowed(kinds)}"
    if keyword == "minimum":
        return f"must be at least {expected}"
    if keyword == "exclusiveMinimum":
        return f"must be greater than {expected}"
    if keyword in ("enum", "const"):
        return "must be one of: {allowed}"
    if keyword == "minLength":
        return "must be a non-empty string"
    if keyword in ("minItems", "minProperties"):
        return "must not be empty"
    if keyword == "pattern":
        return f"must match {expected}"
    return str(error.message).replace("{", "{{").replace("}", "}}")


def _allowed(expected: Any) -> str:
    if isinstance(expected, list):
        return ", ".join(sorted(str(item) for item in expected if item is not None))
    return str(expected)


def _path(steps: Sequence[Any]) -> str:
    path = ""
    for step in steps:
        path = join(path, step if isinstance(step, int) else str(step))
    return path


def _nodes_at(definition: str, steps: Sequence[Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    """The schema nodes that apply to the value at ``steps``, and those of its parent."""
    root = schema() if definition == GATEWAY else schema()["$defs"][definition]
    nodes, parents = _expand([root]), []
    for step in steps:
        children = []
        for node in nodes:
            if isinstance(step, int):
                if isinstance(node.get("items"), dict):
                    children.append(node["items"])
            elif step in node.get("properties", {}):
                children.append(node["properties"][step])
            elif isinstance(node.get("additionalProperties"), dict):
                children.append(node["additionalProperties"])
        nodes, parents = _expand(children), nodes
    return nodes, parents


def _expand(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """These nodes and every node they apply in place ($ref, allOf, then, else)."""
    result: list[dict[str, Any]] = []
    pending = list(nodes)
    while pending:
        node = pending.pop(0)
        if not isinstance(node, dict) or any(node is seen for seen in result):
            continue
        result.append(node)
        reference = node.get("$ref")
        if isinstance(reference, str) and reference.startswith("#/$defs/"):
            pending.append(schema()["$defs"][reference.removeprefix("#/$defs/")])
        pending.extend(node.get("allOf", []))
        pending.extend(node[key] for key in ("then", "else") if key in node)
    return result
