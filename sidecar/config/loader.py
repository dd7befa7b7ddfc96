"""Load and validate ``gateway.yaml``: YAML text in, a frozen ``GatewayConfig`` out.

Every problem is collected (not just the first) and reported with its key path and line,
so ``gateway check-config`` and a refused reload tell the admin exactly what to fix.
Blocking (reads files): call it from a thread when the event loop is running.

The layers, each in its own module: ``yamlread`` reads the file within bounds and turns
it into plain values with the line of every key path; ``structure`` checks them against
the JSON Schema ``gateway.schema.json`` (keys, types, ranges, enums, defaults);
``backends`` and ``toolspecs`` check what the values mean and build the frozen config;
``tls`` loads each https backend's TLS files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .. import sandbox
from ..errors import ConfigError, ConfigIssue
from ..settings import BackendTlsDefaults, ImagesSettings
from . import processes, structure
from .backends import BackendReader
from .issues import Issues
from .schema import CorsConfig, GatewayConfig
from .tls import tls_files
from .toolspecs import ToolReader
from .values import integer, mapping
from .yamlread import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_NODES, PlainReader, compose, read_file

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "ConfigError",
    "ConfigIssue",
    "load_config",
    "parse_config",
    "tls_files",
]


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
    config = parse_config(read_file(path), path, environ, tls_defaults, images_env, heartmula_url)
    if tools_path is not None:
        config = _with_tools_file(config, tools_path, environ)
    if agents_path is not None:
        config = _with_agents_file(config, agents_path)
    # The TLS files' contents are part of the config: a rotated certificate is a new config.
    tls = "".join(backend.tls.fingerprint for backend in config.backends)
    digest = hashlib.sha256(f"{config.digest}:{tls}".encode()).hexdigest()
    sandbox.warn_unconfined(config.tools)
    return dataclasses.replace(config, digest=digest)


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
    issues = Issues(source)
    root = PlainReader(issues, environ).plain(compose(data, source))
    structure.check(root, issues)
    root = mapping(root)
    reader = BackendReader(issues, source.parent)
    defaults = reader.defaults(root, tls_defaults)
    raw = mapping(root.get("backends"))
    backends = reader.backends(raw, defaults, images_env, heartmula_url)
    by_name = {backend.name: backend for backend in backends}
    aliases = reader.aliases(root.get("aliases"), by_name, raw)
    processes.check_groups(backends, defaults.groups, issues)
    tool_reader = ToolReader(issues, source.parent, environ)
    tools = tool_reader.tools(root.get("tools"), by_name)
    token_tools = tool_reader.token_tools(root.get("token_tools"), tools)
    issues.raise_if_any()
    return GatewayConfig(
        source=source,
        digest=hashlib.sha256(data).hexdigest(),
        backends=tuple(backends),
        aliases=MappingProxyType(aliases),
        tools=MappingProxyType(tools),
        token_tools=MappingProxyType(token_tools),
        cors=cors(root.get("cors")),
        groups=MappingProxyType(dict(defaults.groups)),
    )


def _with_tools_file(
    config: GatewayConfig, tools_path: Path, environ: Mapping[str, str]
) -> GatewayConfig:
    data = read_file(tools_path)
    issues = Issues(tools_path)
    root = PlainReader(issues, environ).plain(compose(data, tools_path))
    structure.check(root, issues, structure.TOOLS_FILE)
    root = mapping(root)
    backends = {backend.name: backend for backend in config.backends}
    reader = ToolReader(issues, tools_path.parent, environ)
    tools = reader.tools(root.get("tools"), backends)
    token_tools = reader.token_tools(root.get("token_tools"), tools)
    issues.raise_if_any()
    return dataclasses.replace(
        config,
        digest=hashlib.sha256(config.digest.encode() + data).hexdigest(),
        tools=MappingProxyType(tools),
        token_tools=MappingProxyType(token_tools),
    )


def _with_agents_file(config: GatewayConfig, path: Path) -> GatewayConfig:
    data = read_file(path)
    try:
        document = json.loads(data)
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        raise ConfigError(path, [ConfigIssue("", line, f"invalid JSON: {exc}")]) from None
    except RecursionError:
        issue = ConfigIssue("", None, "invalid JSON: nested too deeply")
        raise ConfigError(path, [issue]) from None
    issues = Issues(path)
    structure.check(document, issues, structure.AGENTS_FILE)
    agents = ToolReader(issues, path.parent, {}).agents(document, config.tools)
    issues.raise_if_any()
    return dataclasses.replace(
        config,
        digest=hashlib.sha256(config.digest.encode() + data).hexdigest(),
        agents=MappingProxyType(agents),
    )


def cors(value: Any) -> CorsConfig:
    """The ``cors`` section: origins compared lower-case, without a trailing slash."""
    spec = mapping(value)
    origins = spec.get("allow_origins")
    allowed = frozenset(
        item.rstrip("/").lower() for item in (origins or []) if isinstance(item, str)
    )
    return CorsConfig(allowed, integer(spec.get("max_age_s"), CorsConfig.max_age_s))
