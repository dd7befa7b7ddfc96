"""How tools run: built in, as a subprocess, or over HTTP to a backend.

Every executor returns a JSON-able result or raises ``ToolFailure`` with an error type;
the bus turns both into the recorded, replayable invocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import sandbox
from ..config.schema import ToolSpec
from ..errors import CalculatorError, ExpressionError, GatewayError, InvalidRequest, ToolFailure
from ..routing.call import backend_call
from ..routing.registry import RegistryHolder
from .calculator import evaluate, parse

log = logging.getLogger("gateway.tools")

# Never passed to a tool, even when a tool's env allowlist names them.
SECRET_VARIABLES = frozenset(
    {
        "GATEWAY_BEARER_TOKEN",
        "GATEWAY_BEARER_TOKENS",
        "IMAGES_URL_SECRET",
        "IMAGES_A1111_AUTH",
        "BACKEND_CLIENT_CERT",
    }
)
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
STDERR_TAIL_BYTES = 64 * 1024  # kept of a tool's stderr (for the failure message)
KILL_GRACE_S = 5.0  # per step of ending a tool: its own kill, then SIGKILL to its group


@dataclass(frozen=True)
class ToolContext:
    """What executors may use: backends (for http tools and music) and the environment."""

    registry: RegistryHolder
    environ: Mapping[str, str]
    request_id: str
    # Folders no sandboxed tool may have mounted: the data dir and where the logs are.
    protected: tuple[Path, ...] = ()


Builtin = Callable[[ToolContext, dict[str, Any]], Awaitable[Any]]


async def _noop(context: ToolContext, arguments: dict[str, Any]) -> Any:
    return {"echo": arguments}


def _check_calculator(arguments: Any) -> str:
    """The expression, if it is one the calculator evaluates; else the 400 a bad argument
    gets (syntax, arity, too long or deep). Parsing only: nothing is computed."""
    expression = arguments.get("expression") if isinstance(arguments, dict) else None
    if not isinstance(expression, str):
        raise InvalidRequest(
            "calculator needs an 'expression' string", param="arguments", code="invalid_arguments"
        )
    try:
        parse(expression)
    except ExpressionError as exc:
        raise InvalidRequest(
            f"calculator: {exc}", param="arguments", code="invalid_arguments"
        ) from None
    return expression


async def _calculator(context: ToolContext, arguments: dict[str, Any]) -> Any:
    """Runs on the loop: ``calculator`` proves every expression cheap (see its docstring).

    The bus has run ``_check_calculator`` before recording the call; a computation that
    fails is the tool's ``calculation_error``.
    """
    expression = _check_calculator(arguments)
    try:
        return {"value": evaluate(expression)}
    except CalculatorError as exc:
        raise ToolFailure("calculation_error", str(exc)) from None


# The bus's own builtins; features that bring a tool (music) are added by the app factory.
# Builtins run on the event loop, so each must either only await I/O (the bus's timeout_s
# cancels it at any await: noop, heartmula_generate) or be CPU work with a proven bound far
# below any timeout_s (the calculator: see calculator.py). Nothing else belongs here: a
# CPU-heavy tool is a subprocess tool, which timeout_s kills.
BUILTINS: Mapping[str, Builtin] = {"noop": _noop, "calculator": _calculator}
# Argument checks a builtin needs beyond its JSON Schema, run by the bus before the call is
# recorded: a call they refuse is a 400 that leaves no record and runs nothing.
BUILTIN_CHECKS: Mapping[str, Callable[[Any], object]] = {"calculator": _check_calculator}


async def execute(
    spec: ToolSpec, arguments: dict[str, Any], context: ToolContext, builtins: Mapping[str, Builtin]
) -> Any:
    if spec.executor == "builtin":
        function = builtins.get(spec.builtin or "")
        if function is None:
            raise ToolFailure("unavailable", f"builtin {spec.builtin!r} is not available")
        return await function(context, arguments)
    if spec.executor == "subprocess":
        return await _subprocess(spec, arguments, context)
    return await _http(spec, arguments, context)


def tool_environment(spec: ToolSpec, environ: Mapping[str, str]) -> dict[str, str]:
    """Only the variables the tool's spec allows, never one of the gateway's secrets."""
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}
    for name in spec.env_allow:
        if name in environ and name not in SECRET_VARIABLES and not _looks_secret(name):
            env[name] = environ[name]
    return env


def _looks_secret(name: str) -> bool:
    upper = name.upper()
    return upper.startswith(("GATEWAY_BEARER", "IMAGES_URL_SECRET")) or upper.endswith(
        ("_API_KEY", "_TOKEN", "_SECRET", "_PASSWORD", "_AUTH")
    )


async def _subprocess(spec: ToolSpec, arguments: dict[str, Any], context: ToolContext) -> Any:
    """Run ``argv`` (no shell) in its sandbox (``sidecar.sandbox``); JSON arguments on stdin.

    The timeout is enforced by the bus (cancellation); here cancellation, like an output
    over the cap, kills every process of the tool (daemonized ones too) and reaps it, so
    a hung tool leaves neither a process nor a zombie.
    """
    problem = await asyncio.to_thread(sandbox.exposed, spec, context.protected)
    if problem is not None:
        raise ToolFailure("unavailable", f"refused: {problem}")
    command = await asyncio.to_thread(sandbox.command, spec, context.environ)
    if command is None:
        raise ToolFailure("unavailable", f"the sandbox is missing: {sandbox.INSTALL_HINT}")
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=tool_environment(spec, context.environ),
            cwd=spec.cwd if spec.sandbox == "none" else None,
            start_new_session=True,
        )
    except OSError as exc:
        raise ToolFailure("unavailable", f"cannot start the tool: {exc.strerror}") from None
    try:
        stdout, stderr = await _communicate(process, json.dumps(arguments).encode(), spec)
    except BaseException:
        await _stop(process, spec)
        raise
    if process.returncode != 0:
        tail = stderr.decode("utf-8", "replace").strip()[-500:]
        raise ToolFailure("failed", f"exited with status {process.returncode}: {tail}")
    text = stdout.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return {"stdout": text}


async def _communicate(
    process: asyncio.subprocess.Process, stdin: bytes, spec: ToolSpec
) -> tuple[bytes, bytes]:
    """Feed stdin while reading stdout and stderr, all at once (no pipe can deadlock).

    stdout over ``max_output_bytes`` fails at once with ``output_too_large`` (the caller
    kills the tool); stderr keeps only its last ``STDERR_TAIL_BYTES``.
    """
    assert process.stdin and process.stdout and process.stderr
    feeding = asyncio.ensure_future(_feed(process.stdin, stdin))
    stdout = asyncio.ensure_future(_read_capped(process.stdout, spec.max_output_bytes))
    stderr = asyncio.ensure_future(_read_tail(process.stderr, STDERR_TAIL_BYTES))
    tasks: list[asyncio.Future[Any]] = [feeding, stdout, stderr]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
        await process.wait()
    finally:
        for task in tasks:
            task.cancel()
    return stdout.result(), stderr.result()


async def _feed(stream: asyncio.StreamWriter, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        # A tool that exited (or closed its stdin) before it was fed: nothing to write.
        # uvloop has closed the pipe by then, and a write to it would raise.
        if not stream.is_closing():
            stream.write(data)
            await stream.drain()
    stream.close()


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Everything; ``output_too_large`` as soon as more than ``limit`` bytes arrived."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(65536):
        size += len(chunk)
        if size > limit:
            raise ToolFailure("output_too_large", f"wrote more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_tail(stream: asyncio.StreamReader, limit: int) -> bytes:
    """The last ``limit`` bytes; the rest is read and dropped."""
    tail = bytearray()
    while chunk := await stream.read(65536):
        tail += chunk
        del tail[:-limit]
    return bytes(tail)


async def _stop(process: asyncio.subprocess.Process, spec: ToolSpec) -> None:
    """End every process of the tool and reap it, within ``KILL_GRACE_S`` per step.

    bwrap: SIGKILL to its group; its PID namespace dies with it. ``sandbox: none``: SIGTERM
    to the reaper, which kills every descendant; SIGKILL to the group if it has not.
    """
    if spec.sandbox == "none" and process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    else:
        _kill_group(process)
    # wait() also waits for the pipes to close: read what is left (a stopped reader pauses).
    drains = [asyncio.ensure_future(_drain(s)) for s in (process.stdout, process.stderr) if s]
    waiter = asyncio.ensure_future(process.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=KILL_GRACE_S)
        if not done:
            _kill_group(process)
            done, _ = await asyncio.wait({waiter}, timeout=KILL_GRACE_S)
        # The pipes end with the tool: read them to their end, which closes them (on
        # uvloop, ``wait`` returns at the exit, before the pipes are read out).
        unread: set[asyncio.Task[None]] = set(drains)
        if done and drains:
            _, unread = await asyncio.wait(drains, timeout=KILL_GRACE_S)
        if not done or unread:
            # Something outside the tool's reach holds its pipes: stop waiting on them.
            transport = getattr(process, "_transport", None)
            if transport is not None:
                transport.close()
        if not done:
            log.error("tool '%s' (pid %d) did not end after SIGKILL", spec.name, process.pid)
    finally:
        for drain in drains:
            drain.cancel()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


def _kill_group(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


async def _http(spec: ToolSpec, arguments: dict[str, Any], context: ToolContext) -> Any:
    backend = context.registry.current.get(spec.http_backend or "")
    if backend is None:
        raise ToolFailure("unavailable", f"backend {spec.http_backend!r} is not configured")
    target = backend.client.url("").with_path(spec.http_path or "/")
    try:
        async with backend_call(backend, None, target, arguments, context.request_id) as call:
            _, reply = await call.read_json()
            return reply
    except GatewayError as exc:
        raise ToolFailure("upstream_error", exc.message) from None
