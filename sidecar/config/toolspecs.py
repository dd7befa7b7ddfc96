"""What the ``tools``, ``token_tools`` and agents sections mean, as frozen data.

The schema has checked the structure; these checks need more: a tool has exactly one
executor, its ``parameters`` is a valid JSON Schema, a bubblewrap sandbox is available on
this host, an http tool names a backend with a URL; ``token_tools`` and agents name only
tools that are configured. A tool or agent with any problem is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema

from .. import sandbox
from .issues import Issues
from .schema import TOOL_EXECUTORS, AgentSpec, BackendConfig, ToolSpec
from .values import flag, integer, mapping, number, strings, text


class ToolReader:
    """Builds tools, token rights and agents from checked plain values."""

    def __init__(self, issues: Issues, base_dir: Path, environ: Mapping[str, str]) -> None:
        self.issues = issues
        self.base_dir = base_dir
        self.environ = environ

    def tools(self, value: Any, backends: Mapping[str, BackendConfig]) -> dict[str, ToolSpec]:
        tools = {}
        for name, spec in mapping(value).items():
            tool = self.tool(name, mapping(spec), backends)
            if tool is not None and not self.issues.under(f"tools.{name}"):
                tools[name] = tool
        return tools

    def tool(
        self, name: str, spec: dict[str, Any], backends: Mapping[str, BackendConfig]
    ) -> ToolSpec | None:
        path = f"tools.{name}"
        version = spec.get("version")
        if isinstance(version, int | float) and not isinstance(version, bool):
            version = str(version)
        parameters = spec.get("parameters")
        if parameters is None:
            parameters = {"type": "object"}
        elif isinstance(parameters, dict):
            try:
                jsonschema.Draft202012Validator.check_schema(parameters)
            except jsonschema.SchemaError as exc:
                where = "/".join(str(part) for part in exc.absolute_path)
                message = f"invalid JSON Schema at '{where}': {exc.message}"
                self.issues.error(f"{path}.parameters", message)
        executors = [key for key in TOOL_EXECUTORS if key in spec]
        if len(executors) != 1:
            self.issues.error(path, f"needs exactly one executor: {', '.join(TOOL_EXECUTORS)}")
            return None
        executor = executors[0]
        fields: dict[str, Any] = {}
        if executor == "builtin":
            fields["builtin"] = spec["builtin"]
        elif executor == "subprocess":
            fields.update(self.subprocess_tool(mapping(spec["subprocess"]), f"{path}.subprocess"))
        else:
            fields.update(self.http_tool(mapping(spec["http"]), f"{path}.http", backends))
        return ToolSpec(
            name=name,
            version=text(version) or "1",
            description=text(spec.get("description")) or "",
            parameters=parameters,
            executor=executor,
            timeout_s=number(spec.get("timeout_s"), 30.0),
            concurrency=integer(spec.get("concurrency"), 4),
            max_output_bytes=integer(spec.get("max_output_bytes"), 1024 * 1024),
            **fields,
        )

    def subprocess_tool(self, spec: dict[str, Any], path: str) -> dict[str, Any]:
        cwd = text(spec.get("cwd"))
        cwd_path = None
        if cwd is not None:
            cwd_path = Path(cwd) if Path(cwd).is_absolute() else self.base_dir / cwd
        mode = text(spec.get("sandbox")) or "bwrap"
        if mode == "bwrap" and (problem := sandbox.unavailable(self.environ)) is not None:
            self.issues.error(f"{path}.sandbox", problem)
        return {
            "argv": tuple(strings(spec.get("argv"))),
            "env_allow": tuple(strings(spec.get("env"))),
            "cwd": cwd_path,
            "sandbox": mode,
            "network": flag(spec.get("network"), False),
            "read_only": tuple(self.base_dir / p for p in strings(spec.get("read_only"))),
        }

    def http_tool(
        self, spec: dict[str, Any], path: str, backends: Mapping[str, BackendConfig]
    ) -> dict[str, Any]:
        backend = text(spec.get("backend"))
        if backend is not None and backend not in backends:
            self.issues.error(f"{path}.backend", f"no backend named {backend!r}")
        elif backend is not None and backends[backend].url is None:
            self.issues.error(f"{path}.backend", f"backend {backend!r} has no URL")
        return {"http_backend": backend, "http_path": text(spec.get("path"))}

    def token_tools(self, value: Any, tools: Mapping[str, ToolSpec]) -> dict[str, frozenset[str]]:
        result = {}
        for token, names in mapping(value).items():
            path = f"token_tools.{token}"
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                continue
            for index, name in enumerate(names):
                if name not in tools:
                    self.issues.error(f"{path}[{index}]", f"no tool named {name!r}")
            result[token] = frozenset(names)
        return result

    def agents(self, document: Any, tools: Mapping[str, ToolSpec]) -> dict[str, AgentSpec]:
        """``{"agents": {name: spec}}`` from AGENT_SPECS_PATH."""
        agents = {}
        for name, spec in mapping(mapping(document).get("agents")).items():
            path = f"agents.{name}"
            spec = mapping(spec)
            allowed = strings(spec.get("tools"))
            for index, tool in enumerate(allowed):
                if tool not in tools:
                    message = f"no tool named {tool!r} is configured"
                    self.issues.error(f"{path}.tools[{index}]", message)
            seed = spec.get("seed", 0)
            agent = AgentSpec(
                name=name,
                model=text(spec.get("model")) or "",
                system_prompt=text(spec.get("system_prompt")) or "",
                tools=tuple(allowed),
                max_turns=integer(spec.get("max_turns"), 6),
                max_seconds=number(spec.get("max_seconds"), 300.0),
                max_tool_output_chars=integer(spec.get("max_tool_output_chars"), 20_000),
                temperature=number(spec.get("temperature"), 0.0),
                seed=integer(seed, None),
            )
            if not self.issues.under(path):
                agents[name] = agent
        return agents
