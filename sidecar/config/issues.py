"""Config problems: each one with its key path and line, all of them reported at once.

``Issues`` is what every config layer (YAML reading, the schema, the meaning checks)
writes to: it knows the line of each key path (recorded while the YAML is read), drops
problems at a path whose ``${VAR}`` was not set (that variable is the one problem there),
reports each problem once, and hands them out in file order.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ..errors import ConfigError, ConfigIssue

_PARENT = re.compile(r"(\.[^.\[]*|\[\d+\])$")


class Issues:
    """The problems found in one file, and the line of every key path read from it."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.lines: dict[str, int] = {}  # key path -> 1-based line
        self.unresolved: set[str] = set()  # paths already reported for a missing ${VAR}
        self._found: dict[tuple[str, int | None, str], None] = {}
        self._spoiled: set[str] = set()  # every path with a problem at or below it

    def error(self, path: str, message: str, node: yaml.Node | None = None) -> None:
        if path in self.unresolved:
            return
        line = node.start_mark.line + 1 if node is not None else self.line(path)
        self._found.setdefault((path, line, message), None)
        while path not in self._spoiled:
            self._spoiled.add(path)
            parent = _PARENT.sub("", path)
            path = parent if parent != path else ""

    def unset_variable(self, path: str, name: str) -> None:
        self.error(path, f"environment variable {name} is not set")
        self.unresolved.add(path)

    def line(self, path: str) -> int | None:
        """The line of ``path``, else of its nearest parent that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            parent = _PARENT.sub("", path)
            path = parent if parent != path else ""
        return self.lines.get("")

    def under(self, path: str) -> bool:
        """Whether a problem was found at ``path`` or inside it."""
        return path in self._spoiled

    def __bool__(self) -> bool:
        return bool(self._found)

    def __len__(self) -> int:
        return len(self._found)

    def listed(self) -> list[ConfigIssue]:
        """Every problem, in the order of the file (problems without a line first)."""
        found = [ConfigIssue(*key) for key in self._found]
        return sorted(found, key=lambda issue: issue.line or 0)

    def raise_if_any(self) -> None:
        if self._found:
            raise ConfigError(self.source, self.listed())


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key
