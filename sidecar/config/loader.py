"""Load and validate ``gateway.yaml``: YAML text in, a frozen ``GatewayConfig`` out.

Every problem is collected (not just the first) and reported with its key path and line,
so ``gateway check-config`` and a refused reload tell the admin exactly what to fix.
Blocking (reads files): call it from a thread when the event loop is running.

Reading is bounded, whatever is at the path: only a regular file (a symlink to one is
fine; a directory, FIFO, device or symlink loop is an error), at most ``MAX_CONFIG_BYTES``;
YAML nodes nest at most ``MAX_DEPTH`` deep and the document, with every alias expanded,
has at most ``MAX_NODES`` nodes (a "billion laughs" file is refused while composing, before
anything is expanded); an alias inside its own anchor is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema
import yaml
from yarl import URL

from .tls import TlsSetupError, build_ssl_context
from ..settings import BackendTlsDefaults, ImagesSettings
from ..toolbus import sandbox
from .schema import (
    BUILTIN_CLASSES,
    BUILTIN_TOOLS,
    CAPABILITIES,
    DEFAULT_CLASS,
    PROTOCOL_CAPABILITIES,
    PROTOCOLS,
    TOOL_EXECUTORS,
    AgentSpec,
    AliasConfig,
    BackendConfig,
    GatewayConfig,
    HealthConfig,
    ImagesConfig,
    ModelConfig,
    QueueConfig,
    Timeouts,
    TlsConfig,
    ToolSpec,
)

MAX_CONFIG_BYTES = 1024 * 1024  # gateway.yaml, TOOLS_REGISTRY_PATH, AGENT_SPECS_PATH
MAX_DEPTH = 32  # nested mappings/sequences
MAX_NODES = 20_000  # YAML nodes with every alias expanded (bounds time and memory)

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_TOP_KEYS = {"version", "defaults", "classes", "backends", "aliases", "tools", "token_tools"}
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TOOL_KEYS = {
    "version",
    "description",
    "parameters",
    "builtin",
    "subprocess",
    "http",
    "timeout_s",
    "concurrency",
    "max_output_bytes",
}
_BACKEND_KEYS = {
    "url",
    "class",
    "protocol",
    "capabilities",
    "limits",
    "queue",
    "health",
    "tls",
    "timeouts",
    "models",
    "api_key",
    "basic_auth",
    "images",
}


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    line: int | None
    message: str


class ConfigError(Exception):
    """The config is invalid; ``issues`` lists every problem found."""

    def __init__(self, source: Path, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        super().__init__(self.render())

    def render(self) -> str:
        lines = []
        for issue in self.issues:
            where = f"{self.source}:{issue.line}" if issue.line else str(self.source)
            lines.append(f"{where}: {issue.path or '(top level)'}: {issue.message}")
        return "\n".join(lines)


def load_config(
    path: Path,
    environ: Mapping[str, str],
    tls_defaults: BackendTlsDefaults,
    images_env: ImagesSettings | None = None,
    tools_path: Path | None = None,
    heartmula_url: str | None = None,
    agents_path: Path | None = None,
) -> GatewayConfig:
    """The config from ``path``; with ``tools_path`` (TOOLS_REGISTRY_PATH), the tools
    come from that file instead of the ``tools:`` section; ``agents_path``
    (AGENT_SPECS_PATH) adds the agents, checked against the tools."""
    config = parse_config(_read(path), path, environ, tls_defaults, images_env, heartmula_url)
    if tools_path is not None:
        config = _with_tools_file(config, tools_path, environ)
    if agents_path is not None:
        config = _with_agents_file(config, agents_path)
    # The TLS files' contents are part of the config: a rotated certificate is a new config.
    tls = "".join(backend.tls.fingerprint for backend in config.backends)
    digest = hashlib.sha256(f"{config.digest}:{tls}".encode()).hexdigest()
    sandbox.warn_unconfined(config.tools)
    return dataclasses.replace(config, digest=digest)


def tls_files(config: GatewayConfig) -> list[Path]:
    """The CA bundles, client certificates and keys the config's backends load."""
    paths: dict[Path, None] = {}
    for backend in config.backends:
        for path in (backend.tls.ca_bundle, backend.tls.client_cert, backend.tls.client_key):
            if path is not None:
                paths[path] = None
    return list(paths)


def _with_agents_file(config: GatewayConfig, path: Path) -> GatewayConfig:
    data = _read(path)
    try:
        document = json.loads(data)
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        raise ConfigError(path, [ConfigIssue("", line, f"invalid JSON: {exc}")]) from None
    except RecursionError:
        issue = ConfigIssue("", None, "invalid JSON: nested too deeply")
        raise ConfigError(path, [issue]) from None
    reader = _Reader(path, {})
    agents = reader.agents(document, config.tools)
    if reader.issues:
        raise ConfigError(path, reader.issues)
    return dataclasses.replace(
        config,
        digest=hashlib.sha256(config.digest.encode() + data).hexdigest(),
        agents=MappingProxyType(agents),
    )


def _with_tools_file(
    config: GatewayConfig, tools_path: Path, environ: Mapping[str, str]
) -> GatewayConfig:
    data = _read(tools_path)
    reader = _Reader(tools_path, environ)
    root = reader.mapping(
        reader.plain(_compose(data, tools_path), ""), "", {"tools", "token_tools"}
    )
    backends = {backend.name: backend for backend in config.backends}
    tools = reader.tools(root.get("tools"), backends)
    token_tools = reader.token_tools(root.get("token_tools"), tools)
    if reader.issues:
        raise ConfigError(tools_path, reader.issues)
    return dataclasses.replace(
        config,
        digest=hashlib.sha256(config.digest.encode() + data).hexdigest(),
        tools=MappingProxyType(tools),
        token_tools=MappingProxyType(token_tools),
    )


def _read(path: Path) -> bytes:
    """The file's bytes: a regular file of at most ``MAX_CONFIG_BYTES``, never blocking."""
    try:
        # O_NONBLOCK: opening a FIFO put in the file's place must not hang the reload.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise ConfigError(path, [ConfigIssue("", None, _cannot_read(exc))]) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(path, [ConfigIssue("", None, "cannot read: not a regular file")])
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(path, [_too_large()])
        chunks = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_CONFIG_BYTES:  # grew while being read
            raise ConfigError(path, [_too_large()])
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(path, [ConfigIssue("", None, _cannot_read(exc))]) from None
    finally:
        os.close(fd)


def _cannot_read(exc: OSError) -> str:
    return f"cannot read: {(exc.strerror or type(exc).__name__).lower()}"


def _too_large() -> ConfigIssue:
    return ConfigIssue("", None, f"larger than {MAX_CONFIG_BYTES} bytes")


class _LimitError(yaml.YAMLError):
    """A bound of the bounded loader was hit at ``path`` (a key path) and ``mark``."""

    def __init__(self, message: str, path: str, mark: yaml.Mark | None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.mark = mark


class _BoundedLoader(yaml.SafeLoader):
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
            if isinstance(event, yaml.AliasEvent):
                if event.anchor in self._open:
                    raise _LimitError(
                        f"alias *{event.anchor} is inside its own anchor (a recursive structure)",
                        self._path(),
                        event.start_mark,
                    )
                node = super().compose_node(parent, index)
            else:
                if len(self._keys) > MAX_DEPTH:
                    raise _LimitError(
                        f"nested deeper than {MAX_DEPTH} levels", self._path(), event.start_mark
                    )
                anchor = getattr(event, "anchor", None)
                if anchor is not None:
                    self._open.add(anchor)
                node = super().compose_node(parent, index)
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


def _compose(data: bytes, source: Path) -> yaml.Node:
    try:
        loader = _BoundedLoader(data.decode("utf-8"))
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
        raise ConfigError(source, [ConfigIssue("", line, f"invalid YAML: {problem}")]) from exc
    if node is None:  # an empty file (or only comments): an empty mapping at line 1
        start = yaml.Mark(str(source), 0, 0, 0, None, None)
        node = yaml.MappingNode("tag:yaml.org,2002:map", [], start, start)
    return node


def parse_config(
    data: bytes,
    source: Path,
    environ: Mapping[str, str],
    tls_defaults: BackendTlsDefaults,
    images_env: ImagesSettings | None = None,
    heartmula_url: str | None = None,
) -> GatewayConfig:
    """Validate ``data``; ``images_env`` (the IMAGES_* shorthand) and ``heartmula_url``
    (HEARTMULA_BASE_URL) add an images or music backend when the YAML has none."""
    reader = _Reader(source, environ)
    root = reader.plain(_compose(data, source), "")
    config = reader.gateway(
        root, hashlib.sha256(data).hexdigest(), tls_defaults, images_env, heartmula_url
    )
    if reader.issues:
        raise ConfigError(source, reader.issues)
    return config


class _Reader:
    """Turns YAML nodes into plain values (remembering lines), then validates them."""

    def __init__(self, source: Path, environ: Mapping[str, str]) -> None:
        self.source = source
        self.base_dir = source.parent
        self.environ = environ
        self.lines: dict[str, int] = {}
        self.issues: list[ConfigIssue] = []
        self._unresolved: set[str] = set()  # paths already reported for a missing ${VAR}
        self._constructor = yaml.constructor.SafeConstructor()

    # -- YAML nodes to values -------------------------------------------------------------

    def plain(self, node: yaml.Node, path: str) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping_node(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.plain(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        value = self._scalar(node, path)
        return self.substitute(value, path) if isinstance(value, str) else value

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
                        self.error(path, "<< must merge a mapping", key_node)
                continue
            key = self._scalar(key_node, path)
            if not isinstance(key, str | int | float | bool):
                self.error(path, "keys must be plain scalars", key_node)
                continue
            key = str(key)
            child = f"{path}.{key}" if path else key
            if key in result:
                self.error(child, "duplicate key", key_node)
                continue
            self.lines[child] = key_node.start_mark.line + 1
            result[key] = self.plain(value_node, child)
        return {**merged, **result}

    def _scalar(self, node: yaml.Node, path: str) -> Any:
        try:
            return self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.error(path, f"invalid value: {problem}", node)
            return None

    def substitute(self, text: str, path: str) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            value = self.environ.get(name)
            if value is None or (value == "" and default is not None):
                if default is None:
                    self.error(path, f"environment variable {name} is not set")
                    self._unresolved.add(path)
                    return ""
                return default
            return value

        return _VAR.sub(replace, text) if "$" in text else text

    # -- reporting ------------------------------------------------------------------------

    def error(self, path: str, message: str, node: yaml.Node | None = None) -> None:
        if path in self._unresolved:
            return
        line = node.start_mark.line + 1 if node is not None else self._line(path)
        self.issues.append(ConfigIssue(path, line, message))

    def _line(self, path: str) -> int | None:
        """The line of ``path``, else of its nearest parent that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            parent = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path)
            path = parent if parent != path else ""
        return self.lines.get("")

    # -- typed readers ---------------------------------------------------------------------

    def mapping(self, value: Any, path: str, allowed: set[str] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, "must be a mapping")
            return {}
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    self.error(_join(path, key), f"unknown key (expected one of: {_list(allowed)})")
        return value

    def string(self, value: Any, path: str, *, required: bool = False) -> str | None:
        if value is None:
            if required:
                self.error(path, "is required")
            return None
        if not isinstance(value, str) or (required and not value.strip()):
            self.error(path, "must be a non-empty string")
            return None
        return value

    def number(
        self,
        value: Any,
        path: str,
        default: float,
        *,
        integer: bool = False,
        minimum: float = 0,
        exclusive: bool = False,
    ) -> Any:
        if value is None:
            return default
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind):
            self.error(path, "must be an integer" if integer else "must be a number")
            return default
        if isinstance(value, float) and not math.isfinite(value):
            self.error(path, "must be a finite number (not NaN or infinity)")
            return default
        if value < minimum or (exclusive and value == minimum):
            relation = "greater than" if exclusive else "at least"
            self.error(path, f"must be {relation} {minimum}")
            return default
        return value

    def boolean(self, value: Any, path: str, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(path, "must be true or false")
            return default
        return value

    def file(self, value: Any, path: str, default: Path | None) -> Path | None:
        text = self.string(value, path)
        if text is None:
            return default
        resolved = Path(text).expanduser()
        if not resolved.is_absolute():
            resolved = self.base_dir / resolved
        if not resolved.is_file():
            self.error(path, f"file not found: {text}")
        return resolved

    def capabilities(self, value: Any, path: str) -> frozenset[str] | None:
        if not isinstance(value, list) or not value:
            self.error(path, f"must be a non-empty list of: {_list(CAPABILITIES)}")
            return None
        result = set()
        for i, item in enumerate(value):
            if item not in CAPABILITIES:
                self.error(f"{path}[{i}]", f"unknown capability {item!r} ({_list(CAPABILITIES)})")
            else:
                result.add(item)
        return frozenset(result)

    def probe_path(self, value: Any, path: str, default: str | None) -> str | None:
        if value is False:
            return None
        text = self.string(value, path)
        if text is None:
            return default
        if not text.startswith("/"):
            self.error(path, "must be an absolute path such as /health (or false)")
            return default
        return text

    # -- sections --------------------------------------------------------------------------

    def gateway(
        self,
        root: Any,
        digest: str,
        tls_defaults: BackendTlsDefaults,
        images_env: ImagesSettings | None,
        heartmula_url: str | None = None,
    ) -> GatewayConfig:
        root = self.mapping(root, "", _TOP_KEYS)
        version = root.get("version", 1)
        if version != 1:
            self.error("version", "only version 1 is supported")
        defaults = self.defaults(root.get("defaults"), tls_defaults)
        classes = self.classes(root.get("classes"))
        backends_raw = self.mapping(root.get("backends"), "backends")
        if not backends_raw:
            self.error("backends", "at least one backend is required")
        backends = []
        for name, spec in backends_raw.items():
            backend = self.backend(name, spec, defaults, classes)
            if backend is not None:
                backends.append(backend)
        if images_env is not None and not any("images" in b.capabilities for b in backends):
            backend = self.images_from_env(images_env, defaults, classes, set(backends_raw))
            if backend is not None:
                backends.append(backend)
        if heartmula_url and not any("music" in b.capabilities for b in backends):
            name = "music" if "music" not in backends_raw else "music-env"
            spec = {"url": heartmula_url, "protocol": "heartmula", "class": "gpu_heavy"}
            backend = self.backend(name, spec, defaults, classes)
            if backend is not None:
                backends.append(backend)
        aliases = self.aliases(root.get("aliases"), {b.name: b for b in backends}, backends_raw)
        tools = self.tools(root.get("tools"), {b.name: b for b in backends})
        return GatewayConfig(
            source=self.source,
            digest=digest,
            backends=tuple(backends),
            aliases=MappingProxyType(aliases),
            tools=MappingProxyType(tools),
            token_tools=MappingProxyType(self.token_tools(root.get("token_tools"), tools)),
        )

    def classes(self, value: Any) -> dict[str, Mapping[str, int]]:
        classes = {name: dict(limits) for name, limits in BUILTIN_CLASSES.items()}
        for name, limits in self.mapping(value, "classes").items():
            path = f"classes.{name}"
            limits = self.mapping(limits, path, set(CAPABILITIES))
            merged = dict(classes.get(name, BUILTIN_CLASSES[DEFAULT_CLASS]))
            for capability, limit in limits.items():
                merged[capability] = self.number(
                    limit, f"{path}.{capability}", 1, integer=True, minimum=1
                )
            classes[name] = merged
        return classes

    def defaults(self, value: Any, env_tls: BackendTlsDefaults) -> _Defaults:
        """The ``defaults`` section, checked once at its own key paths."""
        spec = self.mapping(value, "defaults", {"timeouts", "health", "tls"})
        env_base = TlsConfig(
            verify=env_tls.verify,
            ca_bundle=env_tls.ca_bundle,
            client_cert=env_tls.client_cert,
            client_key=env_tls.client_key,
        )
        return _Defaults(
            timeouts=self.timeouts(spec.get("timeouts"), "defaults.timeouts", Timeouts()),
            health=self.health(spec.get("health"), "defaults.health", _DEFAULT_HEALTH),
            tls=self.tls(spec.get("tls"), "defaults.tls", env_base),
        )

    def backend(
        self,
        name: str,
        spec: Any,
        defaults: _Defaults,
        classes: Mapping[str, Mapping[str, int]],
    ) -> BackendConfig | None:
        path = f"backends.{name}"
        issues_before = len(self.issues)
        if not _NAME.match(name):
            self.error(path, "backend names use letters, digits, '_', '-', '.' (max 64)")
        spec = self.mapping(spec, path, _BACKEND_KEYS)
        protocol = self.string(spec.get("protocol"), f"{path}.protocol") or "openai"
        if protocol not in PROTOCOLS:
            self.error(f"{path}.protocol", f"unsupported protocol (supported: {_list(PROTOCOLS)})")
        if protocol == "mock_images":
            url = None
            if "url" in spec:
                self.error(f"{path}.url", "the built-in mock_images backend has no URL")
        else:
            url = self.url(spec.get("url"), f"{path}.url")
        backend_class = self.string(spec.get("class"), f"{path}.class") or DEFAULT_CLASS
        if backend_class not in classes:
            self.error(f"{path}.class", f"unknown class (known: {_list(classes)})")
            backend_class = DEFAULT_CLASS
        served = PROTOCOL_CAPABILITIES.get(protocol, ("chat",))
        capabilities = self.capabilities(
            spec.get("capabilities", list(served)), f"{path}.capabilities"
        )
        if capabilities is not None and not capabilities <= set(served):
            self.error(
                f"{path}.capabilities", f"protocol {protocol} serves only: {', '.join(served)}"
            )
        limits = self.limits(
            spec.get("limits"), f"{path}.limits", classes[backend_class], capabilities
        )
        queue_spec = self.mapping(spec.get("queue"), f"{path}.queue", {"max", "timeout_s"})
        queue = QueueConfig(
            max=self.number(queue_spec.get("max"), f"{path}.queue.max", 0, integer=True),
            timeout_s=self.number(
                queue_spec.get("timeout_s"), f"{path}.queue.timeout_s", 30.0 if queue_spec else 0
            ),
        )
        health = self.health(spec.get("health"), f"{path}.health", defaults.health)
        if health.readiness is _UNSET:
            health = dataclasses.replace(health, readiness=_readiness_path(protocol, url))
        tls = self.tls(spec.get("tls"), f"{path}.tls", defaults.tls)
        timeouts = self.timeouts(spec.get("timeouts"), f"{path}.timeouts", defaults.timeouts)
        models = self.models(spec.get("models"), f"{path}.models", capabilities or frozenset())
        api_key = self.string(spec.get("api_key"), f"{path}.api_key")
        basic_auth = self.basic_auth(spec.get("basic_auth"), f"{path}.basic_auth")
        images = self.images(spec.get("images"), f"{path}.images")
        if len(self.issues) > issues_before or capabilities is None:
            return None
        if url is None and protocol != "mock_images":
            return None
        # Fingerprint before loading: a file rotated in between is then seen as a change.
        tls = dataclasses.replace(tls, fingerprint=_fingerprint(tls))
        ssl_context = None
        if url is not None and url.scheme == "https":
            ssl_context = self.ssl_context(tls, f"{path}.tls")
            if ssl_context is None:
                return None
        return BackendConfig(
            name=name,
            url=url,
            backend_class=backend_class,
            protocol=protocol,
            capabilities=capabilities,
            limits=MappingProxyType(limits),
            queue=queue,
            health=health,
            tls=tls,
            timeouts=timeouts,
            models=models,
            api_key=api_key,
            basic_auth=basic_auth,
            images=images,
            ssl_context=ssl_context,
        )

    def images_from_env(
        self,
        env: ImagesSettings,
        defaults: _Defaults,
        classes: Mapping[str, Mapping[str, int]],
        taken: set[str],
    ) -> BackendConfig | None:
        """The backend that ``IMAGES_BACKEND`` and friends are shorthand for."""
        if env.backend == "off":
            return None
        spec: dict[str, Any] = {
            "protocol": _ENV_IMAGE_PROTOCOLS[env.backend],
            "class": env.backend_class,
            "images": {"max_pixels": env.max_pixels, "model": env.openai_model},
        }
        if env.backend != "mock":
            if not env.http_base_url:
                self.error("IMAGES_HTTP_BASE_URL", f"required when IMAGES_BACKEND={env.backend}")
                return None
            spec["url"] = env.http_base_url
        if env.a1111_auth and env.backend == "http_a1111":
            spec["basic_auth"] = env.a1111_auth
        name = "images" if "images" not in taken else "images-env"
        return self.backend(name, spec, defaults, classes)

    def tools(self, value: Any, backends: Mapping[str, BackendConfig]) -> dict[str, ToolSpec]:
        tools = {}
        for name, spec in self.mapping(value, "tools").items():
            tool = self.tool(name, spec, backends)
            if tool is not None:
                tools[name] = tool
        return tools

    def tool(self, name: str, spec: Any, backends: Mapping[str, BackendConfig]) -> ToolSpec | None:
        path = f"tools.{name}"
        before = len(self.issues)
        if not _TOOL_NAME.match(name):
            self.error(path, "tool names match ^[A-Za-z0-9_-]{1,64}$")
        spec = self.mapping(spec, path, _TOOL_KEYS)
        version = spec.get("version", "1")
        if isinstance(version, int | float) and not isinstance(version, bool):
            version = str(version)
        if not isinstance(version, str) or not version:
            self.error(f"{path}.version", "must be a non-empty string")
        parameters = spec.get("parameters", {"type": "object"})
        if not isinstance(parameters, dict):
            self.error(f"{path}.parameters", "must be a JSON Schema object")
        else:
            try:
                jsonschema.Draft202012Validator.check_schema(parameters)
            except jsonschema.SchemaError as exc:
                where = "/".join(str(part) for part in exc.absolute_path)
                self.error(f"{path}.parameters", f"invalid JSON Schema at '{where}': {exc.message}")
        executors = [key for key in TOOL_EXECUTORS if key in spec]
        if len(executors) != 1:
            self.error(path, f"needs exactly one executor: {', '.join(TOOL_EXECUTORS)}")
            return None
        executor = executors[0]
        fields: dict[str, Any] = {}
        if executor == "builtin":
            builtin = spec["builtin"]
            if builtin not in BUILTIN_TOOLS:
                self.error(f"{path}.builtin", f"unknown builtin (known: {_list(BUILTIN_TOOLS)})")
            fields["builtin"] = builtin
        elif executor == "subprocess":
            fields.update(self.subprocess_tool(spec["subprocess"], f"{path}.subprocess"))
        else:
            fields.update(self.http_tool(spec["http"], f"{path}.http", backends))
        timeout_s = self.number(spec.get("timeout_s"), f"{path}.timeout_s", 30.0, exclusive=True)
        concurrency = self.number(
            spec.get("concurrency"), f"{path}.concurrency", 4, integer=True, minimum=1
        )
        max_output = self.number(
            spec.get("max_output_bytes"),
            f"{path}.max_output_bytes",
            1024 * 1024,
            integer=True,
            minimum=1024,
        )
        description = self.string(spec.get("description"), f"{path}.description") or ""
        if len(self.issues) > before:
            return None
        return ToolSpec(
            name=name,
            version=version,
            description=description,
            parameters=parameters,
            executor=executor,
            timeout_s=timeout_s,
            concurrency=concurrency,
            max_output_bytes=max_output,
            **fields,
        )

    def subprocess_tool(self, value: Any, path: str) -> dict[str, Any]:
        spec = self.mapping(value, path, {"argv", "env", "cwd", "sandbox", "network", "read_only"})
        argv = spec.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            self.error(f"{path}.argv", "must be a non-empty list of strings (no shell)")
            argv = []
        env = spec.get("env", [])
        if not isinstance(env, list) or not all(isinstance(e, str) for e in env):
            self.error(f"{path}.env", "must be a list of environment variable names")
            env = []
        cwd = self.string(spec.get("cwd"), f"{path}.cwd")
        cwd_path = None
        if cwd is not None:
            cwd_path = Path(cwd) if Path(cwd).is_absolute() else self.base_dir / cwd
        mode = spec.get("sandbox", "bwrap")
        if mode not in ("bwrap", "none"):
            self.error(f"{path}.sandbox", "must be bwrap (the default) or none")
        elif mode == "bwrap" and (problem := sandbox.unavailable(self.environ)) is not None:
            self.error(f"{path}.sandbox", problem)
        read_only = spec.get("read_only", [])
        if not isinstance(read_only, list) or not all(isinstance(p, str) for p in read_only):
            self.error(f"{path}.read_only", "must be a list of paths")
            read_only = []
        return {
            "argv": tuple(argv),
            "env_allow": tuple(env),
            "cwd": cwd_path,
            "sandbox": mode,
            "network": self.boolean(spec.get("network"), f"{path}.network", False),
            "read_only": tuple(self.base_dir / p for p in read_only),
        }

    def http_tool(
        self, value: Any, path: str, backends: Mapping[str, BackendConfig]
    ) -> dict[str, Any]:
        spec = self.mapping(value, path, {"backend", "path"})
        backend = self.string(spec.get("backend"), f"{path}.backend", required=True)
        target = self.string(spec.get("path"), f"{path}.path", required=True)
        if backend is not None and backend not in backends:
            self.error(f"{path}.backend", f"no backend named {backend!r}")
        elif backend is not None and backends[backend].url is None:
            self.error(f"{path}.backend", f"backend {backend!r} has no URL")
        if target is not None and not target.startswith("/"):
            self.error(f"{path}.path", "must be an absolute path such as /tools/lookup")
        return {"http_backend": backend, "http_path": target}

    def agents(self, document: Any, tools: Mapping[str, ToolSpec]) -> dict[str, AgentSpec]:
        """``{"agents": {name: spec}}`` from AGENT_SPECS_PATH."""
        root = self.mapping(document, "", {"agents"})
        agents = {}
        keys = {
            "model",
            "system_prompt",
            "tools",
            "max_turns",
            "max_seconds",
            "max_tool_output_chars",
            "temperature",
            "seed",
        }
        for name, spec in self.mapping(root.get("agents"), "agents").items():
            path = f"agents.{name}"
            before = len(self.issues)
            if not _TOOL_NAME.match(name):
                self.error(path, "agent names match ^[A-Za-z0-9_-]{1,64}$")
            spec = self.mapping(spec, path, keys)
            model = self.string(spec.get("model"), f"{path}.model", required=True)
            allowed = spec.get("tools", [])
            if not isinstance(allowed, list) or not all(isinstance(t, str) for t in allowed):
                self.error(f"{path}.tools", "must be a list of tool names")
                allowed = []
            for index, tool in enumerate(allowed):
                if tool not in tools:
                    self.error(f"{path}.tools[{index}]", f"no tool named {tool!r} is configured")
            seed = spec.get("seed", 0)
            if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
                self.error(f"{path}.seed", "must be an integer or null")
            agent = AgentSpec(
                name=name,
                model=model or "",
                system_prompt=self.string(spec.get("system_prompt"), f"{path}.system_prompt") or "",
                tools=tuple(allowed),
                max_turns=self.number(
                    spec.get("max_turns"), f"{path}.max_turns", 6, integer=True, minimum=1
                ),
                max_seconds=self.number(
                    spec.get("max_seconds"), f"{path}.max_seconds", 300.0, exclusive=True
                ),
                max_tool_output_chars=self.number(
                    spec.get("max_tool_output_chars"),
                    f"{path}.max_tool_output_chars",
                    20_000,
                    integer=True,
                    minimum=100,
                ),
                temperature=self.number(spec.get("temperature"), f"{path}.temperature", 0.0),
                seed=seed if isinstance(seed, int) else None,
            )
            if len(self.issues) == before:
                agents[name] = agent
        return agents

    def token_tools(self, value: Any, tools: Mapping[str, ToolSpec]) -> dict[str, frozenset[str]]:
        result = {}
        for token, names in self.mapping(value, "token_tools").items():
            path = f"token_tools.{token}"
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                self.error(path, "must be a list of tool names")
                continue
            for index, name in enumerate(names):
                if name not in tools:
                    self.error(f"{path}[{index}]", f"no tool named {name!r}")
            result[token] = frozenset(names)
        return result

    def basic_auth(self, value: Any, path: str) -> tuple[str, str] | None:
        text = self.string(value, path)
        if text is None:
            return None
        user, sep, password = text.partition(":")
        if not sep or not user:
            self.error(path, "must be user:password")
            return None
        return user, password

    def images(self, value: Any, path: str) -> ImagesConfig:
        spec = self.mapping(value, path, {"max_pixels", "model"})
        return ImagesConfig(
            max_pixels=self.number(
                spec.get("max_pixels"),
                f"{path}.max_pixels",
                ImagesConfig.max_pixels,
                integer=True,
                minimum=64 * 64,
            ),
            model=self.string(spec.get("model"), f"{path}.model"),
        )

    def ssl_context(self, tls: TlsConfig, path: str) -> ssl.SSLContext | None:
        """Load the backend's TLS files now, so a bad PEM is refused like any bad value."""
        try:
            return build_ssl_context(tls)
        except TlsSetupError as exc:
            self.error(f"{path}.{exc.field}", str(exc))
            return None

    def url(self, value: Any, path: str) -> URL | None:
        text = self.string(value, path, required=True)
        if text is None:
            return None
        try:
            url = URL(text.rstrip("/"))
        except ValueError:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            self.error(path, "must be an http:// or https:// URL with a host")
            return None
        if url.query_string or url.fragment:
            self.error(path, "must not have a query or fragment")
        return url

    def limits(
        self,
        value: Any,
        path: str,
        class_limits: Mapping[str, int],
        capabilities: frozenset[str] | None,
    ) -> dict[str, int]:
        spec = self.mapping(value, path, set(CAPABILITIES))
        limits = {}
        for capability in capabilities or ():
            limits[capability] = self.number(
                spec.get(capability),
                f"{path}.{capability}",
                class_limits.get(capability, 1),
                integer=True,
                minimum=1,
            )
        for capability in spec:
            if capability in CAPABILITIES and capability not in (capabilities or ()):
                self.error(f"{path}.{capability}", "limit for a capability the backend lacks")
        return limits

    def health(self, value: Any, path: str, base: HealthConfig) -> HealthConfig:
        spec = self.mapping(value, path, {"liveness", "readiness", "interval_s", "timeout_s"})
        return HealthConfig(
            liveness=self.probe_path(spec.get("liveness"), f"{path}.liveness", base.liveness),
            readiness=self.probe_path(spec.get("readiness"), f"{path}.readiness", base.readiness),
            interval_s=self.number(
                spec.get("interval_s"),
                f"{path}.interval_s",
                base.interval_s,
                minimum=0,
                exclusive=True,
            ),
            timeout_s=self.number(
                spec.get("timeout_s"),
                f"{path}.timeout_s",
                base.timeout_s,
                minimum=0,
                exclusive=True,
            ),
        )

    def tls(self, value: Any, path: str, base: TlsConfig) -> TlsConfig:
        spec = self.mapping(value, path, {"verify", "ca_bundle", "client_cert", "client_key"})
        client_cert = self.file(spec.get("client_cert"), f"{path}.client_cert", None)
        client_key = self.file(spec.get("client_key"), f"{path}.client_key", None)
        if "client_cert" not in spec and "client_key" not in spec:
            client_cert, client_key = base.client_cert, base.client_key
        elif "client_key" in spec and "client_cert" not in spec:
            self.error(f"{path}.client_key", "client_key needs client_cert")
        return TlsConfig(
            verify=self.boolean(spec.get("verify"), f"{path}.verify", base.verify),
            ca_bundle=self.file(spec.get("ca_bundle"), f"{path}.ca_bundle", base.ca_bundle),
            client_cert=client_cert,
            client_key=client_key,
        )

    def timeouts(self, value: Any, path: str, base: Timeouts) -> Timeouts:
        spec = self.mapping(value, path, {"connect_s", "read_s", "stream_idle_s"})

        def read(key: str) -> float:
            return self.number(
                spec.get(key), f"{path}.{key}", getattr(base, key), minimum=0, exclusive=True
            )

        return Timeouts(
            connect_s=read("connect_s"), read_s=read("read_s"), stream_idle_s=read("stream_idle_s")
        )

    def models(
        self, value: Any, path: str, backend_capabilities: frozenset[str]
    ) -> tuple[ModelConfig, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            self.error(path, "must be a list of model ids (or omitted to discover them)")
            return None
        models: list[ModelConfig] = []
        seen = set()
        for i, item in enumerate(value):
            item_path = f"{path}[{i}]"
            capabilities = backend_capabilities
            if isinstance(item, dict):
                spec = self.mapping(item, item_path, {"id", "capabilities"})
                model_id = self.string(spec.get("id"), f"{item_path}.id", required=True)
                if "capabilities" in spec:
                    capabilities = (
                        self.capabilities(spec["capabilities"], f"{item_path}.capabilities")
                        or capabilities
                    )
                    for extra in capabilities - backend_capabilities:
                        self.error(f"{item_path}.capabilities", f"backend lacks {extra!r}")
            else:
                model_id = self.string(item, item_path, required=True)
            if model_id is None:
                continue
            if model_id in seen:
                self.error(item_path, f"model {model_id!r} listed twice")
            seen.add(model_id)
            models.append(ModelConfig(model_id, capabilities))
        return tuple(models)

    def aliases(
        self, value: Any, backends: Mapping[str, BackendConfig], declared: Mapping[str, Any]
    ) -> dict[str, AliasConfig]:
        aliases = {}
        keys = {"backend", "model", "max_tokens_cap", "temperature_cap", "tools"}
        for name, spec in self.mapping(value, "aliases").items():
            path = f"aliases.{name}"
            spec = self.mapping(spec, path, keys)
            backend = self.string(spec.get("backend"), f"{path}.backend", required=True)
            model = self.string(spec.get("model"), f"{path}.model", required=True)
            if backend is not None and backend not in declared:
                self.error(f"{path}.backend", f"no backend named {backend!r}")
            target = backends.get(backend or "")
            listed = {m.id for m in target.models} if target and target.models is not None else None
            if listed is not None and model is not None and model not in listed:
                self.error(f"{path}.model", f"backend {backend!r} does not list {model!r}")
            max_tokens_cap = spec.get("max_tokens_cap")
            temperature_cap = spec.get("temperature_cap")
            if max_tokens_cap is not None:
                max_tokens_cap = self.number(
                    max_tokens_cap, f"{path}.max_tokens_cap", 1, integer=True, minimum=1
                )
            if temperature_cap is not None:
                temperature_cap = self.number(temperature_cap, f"{path}.temperature_cap", 1.0)
            if backend is None or model is None:
                continue
            aliases[name] = AliasConfig(
                name=name,
                backend=backend,
                model=model,
                max_tokens_cap=max_tokens_cap,
                temperature_cap=temperature_cap,
                tools=self.boolean(spec.get("tools"), f"{path}.tools", True),
            )
        return aliases


_ENV_IMAGE_PROTOCOLS = {
    "mock": "mock_images",
    "http_a1111": "a1111",
    "http_openai_images": "openai_images",
}
_UNSET: Any = "(unset)"
_DEFAULT_HEALTH = HealthConfig(readiness=_UNSET)


@dataclass(frozen=True)
class _Defaults:
    timeouts: Timeouts
    health: HealthConfig
    tls: TlsConfig


def _readiness_path(protocol: str, url: URL | None) -> str | None:
    """Where a backend says it can serve, by protocol."""
    if url is None:
        return None
    if protocol == "a1111":
        return "/sdapi/v1/sd-models"
    if protocol in ("openai_images", "heartmula"):
        return "/readyz"
    return f"{url.path.rstrip('/')}/models"


def _fingerprint(tls: TlsConfig) -> str:
    """A digest of the TLS files' contents: a rotated certificate means a new session."""
    digest = hashlib.sha256()
    for path in (tls.ca_bundle, tls.client_cert, tls.client_key):
        if path is not None:
            with contextlib.suppress(OSError):
                digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _list(items: Any) -> str:
    return ", ".join(sorted(items))
