"""How tools run: built in, as a subprocess, or over HTTP to a backend.

Every executor returns a JSON-able result or raises ``ToolFailure`` with an error type;
the bus turns both into the recorded, replayable invocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..config.schema import ToolSpec
from ..errors import GatewayError, InvalidRequest
from ..routing.registry import RegistryHolder
from .calculator import CalculatorError, ExpressionError, evaluate

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


class ToolFailure(Exception):
    """The tool ran but did not succeed; ``kind`` is the error type clients see."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class ToolContext:
    """What executors may use: backends (for http tools and music) and the environment."""

    registry: RegistryHolder
    environ: Mapping[str, str]
    request_id: str


Builtin = Callable[[ToolContext, dict[str, Any]], Awaitable[Any]]


async def _noop(context: ToolContext, arguments: dict[str, Any]) -> Any:
    return {"echo": arguments}


async def _calculator(context: ToolContext, arguments: dict[str, Any]) -> Any:
    """Runs on the loop: ``calculator`` proves every expression cheap (see its docstring).

    A bad expression (syntax, arity, too long or deep) is a 400 like any bad argument and
    nothing is computed; a computation that fails is the tool's ``calculation_error``.
    """
    expression = arguments.get("expression") if isinstance(arguments, dict) else None
    if not isinstance(expression, str):
        raise InvalidRequest(
            "calculator needs an 'expression' string", param="arguments", code="invalid_arguments"
        )
    try:
        return {"value": evaluate(expression)}
    except ExpressionError as exc:
        raise InvalidRequest(
            f"calculator: {exc}", param="arguments", code="invalid_arguments"
        ) from None
    except CalculatorError as exc:
        raise ToolFailure("calculation_error", str(exc)) from None


# The bus's own builtins; features that bring a tool (music) are added by the app factory.
# Builtins run on the event loop, so each must either only await I/O (the bus's timeout_s
# cancels it at any await: noop, heartmula_generate) or be CPU work with a proven bound far
# below any timeout_s (the calculator: see calculator.py). Nothing else belongs here: a
# CPU-heavy tool is a subprocess tool, which timeout_s kills.
BUILTINS: Mapping[str, Builtin] = {"noop": _noop, "calculator": _calculator}


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
    """Run ``argv`` (no shell) in its own process group; JSON arguments on stdin.

    The timeout is enforced by the bus (cancellation); here cancellation kills the whole
    group and reaps it, so a hung tool leaves neither a process nor a zombie.
    """
    process = await asyncio.create_subprocess_exec(
        *spec.argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=tool_environment(spec, context.environ),
        cwd=spec.cwd,
        start_new_session=True,
    )
    try:
        stdout, stderr = await _communicate(process, json.dumps(arguments).encode(), spec)
    except BaseException:
        _kill_group(process)
        with contextlib.suppress(ProcessLookupError, OSError):
            await asyncio.shield(process.wait())
        raise
    if process.returncode != 0:
        tail = stderr.decode("utf-8", "replace").strip()[-500:]
        raise ToolFailure("failed", f"exited with status {process.returncode}: {tail}")
    text = stdout.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return {"stdout": text}


async def _communicate(
    process: asyncio.subprocess.Process, stdin: bytes, spec: ToolSpec
) -> tuple[bytes, bytes]:
    assert process.stdin and process.stdout and process.stderr
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        process.stdin.write(stdin)
        await process.stdin.drain()
    process.stdin.close()
    stdout_task = asyncio.ensure_future(_read_capped(process.stdout, spec.max_output_bytes))
    stderr_task = asyncio.ensure_future(_read_capped(process.stderr, 64 * 1024))
    try:
        stdout = await stdout_task
        if stdout is None:
            _kill_group(process)
            raise ToolFailure("output_too_large", f"wrote more than {spec.max_output_bytes} bytes")
        stderr = await stderr_task
        await process.wait()
    finally:
        stdout_task.cancel()
        stderr_task.cancel()
    return stdout, stderr or b""


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(65536):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


async def _http(spec: ToolSpec, arguments: dict[str, Any], context: ToolContext) -> Any:
    backend = context.registry.current.get(spec.http_backend or "")
    if backend is None:
        raise ToolFailure("unavailable", f"backend {spec.http_backend!r} is not configured")
    try:
        target = backend.client.url("").with_path(spec.http_path or "/")
        return await backend.client.call_json(target, arguments, context.request_id)
    except GatewayError as exc:
        raise ToolFailure("upstream_error", exc.message) from None
