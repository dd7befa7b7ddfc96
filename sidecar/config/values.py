"""Typed reads of values the schema has already checked.

The meaning checks run after ``structure.check`` and on the same plain values, so a value
of the wrong type was reported already: these helpers then quietly give the default, and
the config is refused anyway. They never report anything themselves.
"""

from __future__ import annotations

import math
from typing import Any


def mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def text(value: Any, default: str | None = None) -> str | None:
    return value if isinstance(value, str) else default


def number(value: Any, default: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return value if math.isfinite(value) else default


def integer(value: Any, default: Any) -> Any:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def flag(value: Any, default: bool) -> bool:
    return value if isinstance(value, bool) else default


def strings(value: Any) -> list[str]:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return []


def listing(items: Any) -> str:
    return ", ".join(sorted(items))
