"""Reading a config file: bounded bytes, bounded YAML, plain values with their lines.

Reading is bounded, whatever is at the path: only a regular file (a symlink to one is
fine; a directory, FIFO, device or symlink loop is an error), at most ``MAX_CONFIG_BYTES``;
YAML nodes nest at most ``MAX_DEPTH`` deep and the document, with every alias expanded,
has at most ``MAX_NODES`` nodes (a "billion laughs" file is refused while composing, before
anything is expanded); an alias inside its own anchor is refused. Reading the nodes
spends at most ``MAX_EXPANDED_CHARS`` characters on key paths and string values, with
every alias and ``${VAR}`` expanded: a long string or key used thousands of times (by
aliases, or as the parent of a long list) is refused, not copied gigabytes deep. A NUL
character (``"\\0"`` in a quoted string) is refused anywhere: a process's argv or
environment would be cut at it without a word.

The composed nodes become plain values (dicts, lists, scalars) with the line of every key
path recorded in ``Issues``, and ``${VAR}`` / ``${VAR:-default}`` replaced from the
environment (``$${`` is a literal ``${``). Blocking (reads files): call it off the loop.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, ConfigIssue
from .issues import Issues, join

MAX_CONFIG_BYTES = 1024 * 1024  # gateway.yaml, TOOLS_REGISTRY_PATH, AGENT_SPECS_PATH
MAX_DEPTH = 32  # nested mappings/sequences
MAX_NODES = 20_000  # YAML nodes with every alias expanded (bounds time and memory)
# Characters of key paths and string values, aliases and ${VAR}s expanded (bounds memory).
MAX_EXPANDED_CHARS = 8 * MAX_CONFIG_BYTES
_SHOWN_PATH_CHARS = 200  # a key path in the "too large" message is cut to this

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_TAB_HINT = " (use spaces, not tabs, to indent YAML)"


def read_file(path: Path, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The file's bytes: a regular file of at most ``limit`` bytes, never blocking."""
    try:
        # O_NONBLOCK: opening a FIFO put in the file's place must not hang the reload.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise ConfigError(path, [ConfigIssue("", None, _cannot_read(exc))]) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(path, [ConfigIssue("", None, "cannot read: not a regular file")])
        if info.st_size > limit:
            raise ConfigError(path, [_too_large(limit)])
        chunks = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # grew while being read
            raise ConfigError(path, [_too_large(limit)])
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(path, [ConfigIssue("", None, _cannot_read(exc))]) from None
    finally:
        os.close(fd)


def _cannot_read(exc: OSError) -> str:
    return f"cannot read: {(exc.strerror or type(exc).__name__).lower()}"


def _too_large(limit: int) -> ConfigIssue:
    return ConfigIssue("", None, f"larger than {limit} bytes")


class _LimitError(yaml.YAMLError):
    """A bound of the bounded loader was hit at ``path`` (a key path) and ``mark``."""

    def __init__(self, message: str, path: str, mark: Any) -> None:  # a yaml Mark or None
        super().__init__(message)
        self.message = message
        self.path = path
        self.mark = mark


if yaml.__with_libyaml__:
    from yaml._yaml import CParser  # what yaml.cyaml uses; the stubs export it from here

    class _SafeLoader(
        yaml.composer.Composer,
        CParser,
        yaml.constructor.SafeConstructor,
        yaml.resolver.Resolver,
    ):
        """``SafeLoader`` with libyaml's scanner and parser (ten times faster on a big
        file) under PyYAML's composer, so the bounds below still see every node."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

else:  # pragma: no cover - PyYAML built without libyaml
    _SafeLoader = yaml.SafeLoader  # type: ignore[misc,assignment]


class _BoundedLoader(_SafeLoader):
    """Composes nodes like ``SafeLoader``, within ``MAX_DEPTH`` and ``MAX_NODES``.

    Aliases are not expanded here, so each node's expanded size is summed bottom-up
    (shared nodes are counted once per use, as the reader will walk them) and the
    budget is checked as the document is composed: the bound costs milliseconds.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._keys: list[str] = []  # the key path to the node being composed
        self._open: set[str] = set()  # anchors whose node is still being composed
        self._sizes: dict[int, int] = {}  # id(node) -> nodes once its aliases are expanded

    def _path(self) -> str:
        return "".join(self._keys).lstrip(".")

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if isinstance(index, yaml.ScalarNode):
            self._keys.append(f".{index.value}")
        elif isinstance(index, int) and not isinstance(index, bool):
            self._keys.append(f"[{index}]")
        else:
            self._keys.append("")
        try:
            event = self.peek_event()
            assert event is not None  # compose_node is only called with an event ahead
            if isinstance(event, yaml.AliasEvent):
                if event.anchor in self._open:
                    raise _LimitError(
                        f"alias *{event.anchor} is inside its own anchor (a recursive structure)",
                        self._path(),
                        event.start_mark,
                    )
                node = super().compose_node(parent, index)
                assert node is not None  # an alias resolves to its anchored node
            else:
                if len(self._keys) > MAX_DEPTH:
                    raise _LimitError(
                        f"nested deeper than {MAX_DEPTH} levels", self._path(), event.start_mark
                    )
                anchor = getattr(event, "anchor", None)
                if anchor is not None:
                    self._open.add(anchor)
                node = super().compose_node(parent, index)
                assert node is not None  # a node event was peeked: it composes to a node
                self._open.discard(anchor)
                self._sizes[id(node)] = 1 + sum(self._size(child) for child in _children(node))
            if self._size(node) > MAX_NODES:
                raise _LimitError(
                    f"more than {MAX_NODES} nodes once aliases are expanded",
                    self._path(),
                    event.start_mark,
                )
            return node
        finally:
            self._keys.pop()

    def _size(self, node: yaml.Node) -> int:
        return self._sizes.get(id(node), 1)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def compose(data: bytes, source: Path) -> yaml.Node:
    """The YAML document's root node (an empty mapping for an empty file)."""
    try:
        text = data.decode("utf-8")
        loader = _BoundedLoader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [ConfigIssue("", None, "not UTF-8 text")]) from exc
    except _LimitError as exc:
        line = exc.mark.line + 1 if exc.mark is not None else None
        raise ConfigError(source, [ConfigIssue(exc.path, line, exc.message)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        if "maximum nesting depth" in problem:  # libyaml's own bound, far above ours
            raise ConfigError(source, [_too_deep(line)]) from None
        hint = _TAB_HINT if _tab_caused(text, problem, line) else ""
        issue = ConfigIssue("", line, f"invalid YAML: {problem}{hint}")
        raise ConfigError(source, [issue]) from exc
    if node is None:  # an empty file (or only comments): an empty mapping at line 1
        start = yaml.Mark(str(source), 0, 0, 0, None, None)  # type: ignore[arg-type]
        node = yaml.MappingNode("tag:yaml.org,2002:map", [], start, start)
    return node


def _too_deep(line: int | None) -> ConfigIssue:
    return ConfigIssue("", line, f"nested deeper than {MAX_DEPTH} levels")


def _tab_caused(text: str, problem: str, line: int | None) -> bool:
    """Whether a tab is the likely cause: PyYAML names it, or it indents the line at fault."""
    if "'\\t'" in problem:
        return True
    if line is None:
        return False
    lines = text.splitlines()[max(line - 2, 0) : line]  # the line at fault and the one before
    return any("\t" in row[: len(row) - len(row.lstrip())] for row in lines)


class PlainReader:
    """Turns YAML nodes into plain values, recording each key path's line in ``issues``."""

    def __init__(self, issues: Issues, environ: Mapping[str, str]) -> None:
        self.issues = issues
        self.environ = environ
        self._constructor = yaml.constructor.SafeConstructor()
        self._budget = MAX_EXPANDED_CHARS

    def plain(self, node: yaml.Node, path: str = "") -> Any:
        self._spend(len(path), path)
        self.issues.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping_node(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.plain(item, join(path, i)) for i, item in enumerate(node.value)]
        value = self._scalar(node, path)
        if not isinstance(value, str):
            return value
        self._spend(len(value), path)
        value = self.substitute(value, path)
        if "\0" in value:
            self.issues.error(path, "must not contain a NUL character (\\0)", node)
        return value

    def _spend(self, chars: int, path: str) -> None:
        """Count ``chars`` against ``MAX_EXPANDED_CHARS``; past it the file is refused."""
        self._budget -= chars
        if self._budget < 0:
            shown = path if len(path) <= _SHOWN_PATH_CHARS else path[:_SHOWN_PATH_CHARS] + "..."
            message = (
                f"more than {MAX_EXPANDED_CHARS} characters once aliases and ${{VAR}}s are expanded"
            )
            issue = ConfigIssue(shown, self.issues.line(path), message)
            raise ConfigError(self.issues.source, [issue])

    def _mapping_node(self, node: yaml.MappingNode, path: str) -> dict[str, Any]:
        """Keys in order; ``<<`` merges come first and explicit keys may override them."""
        merged: dict[str, Any] = {}
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                sources = (
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                for source in sources:
                    if isinstance(source, yaml.MappingNode):
                        merged.update(self._mapping_node(source, path))
                    else:
                        self.issues.error(path, "<< must merge a mapping", key_node)
                continue
            key = self._scalar(key_node, path)
            if not isinstance(key, str | int | float | bool):
                self.issues.error(path, "keys must be plain scalars", key_node)
                continue
            key = str(key)
            child = join(path, key)
            if "\0" in key:
                self.issues.error(path, "keys must not contain a NUL character (\\0)", key_node)
                continue
            if key in result:
                self.issues.error(child, "duplicate key", key_node)
                continue
            self.issues.lines[child] = key_node.start_mark.line + 1
            result[key] = self.plain(value_node, child)
        return {**merged, **result}

    def _scalar(self, node: yaml.Node, path: str) -> Any:
        try:
            return self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.issues.error(path, f"invalid value: {problem}", node)
            return None

    def substitute(self, text: str, path: str) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            value = self.environ.get(name)
            if value is None or (value == "" and default is not None):
                if default is None:
                    self.issues.unset_variable(path, name)
                    return ""
                self._spend(len(default), path)
                return default
            self._spend(len(value), path)
            return value

        return _VAR.sub(replace, text) if "$" in text else text
