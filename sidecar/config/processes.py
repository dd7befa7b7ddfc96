"""What ``gateway.yaml`` says about model servers the gateway runs itself
(``process:``), the GPU groups they share (``groups:``), and the ``lifecycle:`` hooks of
servers it does not run: the meaning checks the schema cannot make.

A run server's URL puts ``{port}`` where the port goes, on a loopback host (the gateway
picks the port when it starts the process), and its command passes ``{port}`` too. A
group is a GPU's memory (``memory_mb``) or one model at a time (``exclusive``); every
member must be able to load beside the members pinned in it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from yarl import URL

from .issues import Issues
from .schema import BackendConfig, GroupConfig, ModelConfig, ProcessConfig
from .values import flag, integer, listing, mapping, number, strings, text

_PORT = "{port}"
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def groups(value: Any, issues: Issues) -> dict[str, GroupConfig]:
    found = {}
    for name, spec in mapping(value).items():
        spec = mapping(spec)
        memory = integer(spec.get("memory_mb"), None)
        exclusive = flag(spec.get("exclusive"), False)
        if memory is None and not exclusive:
            issues.error(f"groups.{name}", "needs memory_mb or exclusive: true")
        found[name] = GroupConfig(
            name=name,
            memory_mb=memory,
            exclusive=exclusive,
            fairness_s=number(spec.get("fairness_s"), GroupConfig.fairness_s),
        )
    return found


def check_groups(
    backends: list[BackendConfig], groups: Mapping[str, GroupConfig], issues: Issues
) -> None:
    """Every member must be able to load beside the members that are never evicted."""
    for group in groups.values():
        members = [b for b in backends if b.process is not None and b.process.group == group.name]
        pinned = [b for b in members if b.process is not None and b.process.pin]
        for backend in members:
            assert backend.process is not None
            others = [b for b in pinned if b is not backend]
            path = f"backends.{backend.name}.process"
            if group.exclusive and others:
                message = f"exclusive group {group.name!r} has pinned member {others[0].name!r}"
                issues.error(f"{path}.group", f"can never load: {message}")
                continue
            if group.memory_mb is None:
                continue
            held = sum(b.process.memory_mb for b in others if b.process is not None)
            if held + backend.process.memory_mb > group.memory_mb:
                message = (
                    f"{backend.process.memory_mb} MB does not fit in group "
                    f"{group.name!r} ({group.memory_mb} MB"
                    + (f", {held} MB of it pinned" if held else "")
                    + ")"
                )
                issues.error(f"{path}.memory_mb", message)


def process_url(
    value: Any, path: str, read_url: Callable[[Any, str], URL | None], issues: Issues
) -> URL | None:
    """A run process's URL: ``{port}`` stands for the port, on a loopback host; the URL
    keeps port 0 until the registry gives the backend its port. ``read_url`` checks the
    rest, as for any backend's URL."""
    if not isinstance(value, str) or _PORT not in value:
        message = "must put {port} where the port goes, e.g. http://127.0.0.1:{port}/v1"
        issues.error(path, message)
        return None
    url = read_url(value.replace(_PORT, "0"), path)
    if url is None:
        return None
    if url.explicit_port != 0 or url.host not in _LOOPBACK:
        message = "must be http://127.0.0.1:{port}/... (a loopback host; {port} as the port)"
        issues.error(path, message)
        return None
    return url


def process(
    value: Any, path: str, groups: Mapping[str, GroupConfig], issues: Issues
) -> ProcessConfig | None:
    if value is None:
        return None
    spec = mapping(value)
    cmd = tuple(strings(spec.get("cmd")))
    if cmd and not any(_PORT in arg for arg in cmd):
        issues.error(f"{path}.cmd", "must pass {port} (the port the gateway picks)")
    group = text(spec.get("group"))
    memory = integer(spec.get("memory_mb"), 0)
    if group is not None:
        found = groups.get(group)
        if found is None:
            known = listing(groups) or "none"
            issues.error(f"{path}.group", f"no group named {group!r} (known: {known})")
        elif found.memory_mb is not None and memory > found.memory_mb:
            message = f"{memory} MB cannot fit in group {group!r} ({found.memory_mb} MB)"
            issues.error(f"{path}.memory_mb", message)
    env = {key: val for key, val in mapping(spec.get("env")).items() if isinstance(val, str)}
    for key in env:
        if not key or "=" in key:  # the child would get another variable, without a word
            issues.error(f"{path}.env.{key}", "must be a variable name (not empty, no '=')")
    return ProcessConfig(
        cmd=cmd,
        env=MappingProxyType(env),
        ready=text(spec.get("ready"), ProcessConfig.ready) or ProcessConfig.ready,
        start_timeout_s=number(spec.get("start_timeout_s"), ProcessConfig.start_timeout_s),
        ttl_s=number(spec.get("ttl_s"), ProcessConfig.ttl_s),
        group=group,
        memory_mb=memory,
        preload=flag(spec.get("preload"), False),
        pin=flag(spec.get("pin"), False),
        drain_timeout_s=number(spec.get("drain_timeout_s"), ProcessConfig.drain_timeout_s),
        stop_timeout_s=number(spec.get("stop_timeout_s"), ProcessConfig.stop_timeout_s),
    )


def check_lifecycle(
    spec: Mapping[str, Any],
    path: str,
    protocol: str,
    process: ProcessConfig | None,
    lifecycle: str | None,
    models: tuple[ModelConfig, ...] | None,
    issues: Issues,
) -> None:
    """A run server lists its models (a stopped one cannot be asked) and has no
    ``lifecycle:`` hooks; hooks need the OpenAI protocol; ``keep_alive`` needs hooks
    that take it."""
    if process is not None:
        if models is None:
            issues.error(f"{path}.models", "a backend with process: must list its models")
        if lifecycle is not None:
            issues.error(f"{path}.lifecycle", "process: and lifecycle: exclude each other")
    if lifecycle is not None and protocol != "openai":
        issues.error(f"{path}.lifecycle", "needs protocol openai")
    if "keep_alive" in spec and lifecycle not in ("ollama", "vllm-sleep"):
        issues.error(f"{path}.keep_alive", "needs lifecycle: ollama or vllm-sleep")


def keep_alive(value: Any) -> str | int | None:
    if isinstance(value, bool):
        return None
    return value if isinstance(value, str | int) else None
