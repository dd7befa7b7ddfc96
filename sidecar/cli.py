"""``gateway``: serve the sidecar, check a config, manage API keys, or run the fake backends.

Exit codes: 0 success; 1 an invalid config (check-config) or a runtime failure; 2 the
environment or the config keeps ``serve`` from starting, or bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import logging.handlers
import os
import queue
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from .app import create_app
from .auth.keys import ENDPOINTS, KeyDatabase
from .config.schema import GatewayConfig
from .errors import ConfigError, DatabaseError, InvalidRequest, SettingsError
from .launcher import raise_open_file_limit
from .mock_backends import (
    MockBehaviour,
    create_a1111_app,
    create_heartmula_app,
    create_llama_router_app,
    create_mock_app,
    create_model_server_app,
    create_ollama_lifecycle_app,
    create_openai_images_app,
    create_vllm_sleep_app,
)
from .observability.access_log import BatchedLineWriter
from .reload import load_checked
from .settings import Settings, parse_bearer_tokens

log = logging.getLogger("gateway")

# Connections Caddy may hold open to the sidecar at once wait here, not as dial errors
# (the kernel caps it at net.core.somaxconn; `serve` warns when that is lower).
LISTEN_BACKLOG = 2048
# Caddy's `max_header_size 64KiB` (the Caddyfile) bounds the request line plus headers,
# and Go reads up to 4 KiB past it: the sidecar accepts any one line that long, so what
# Caddy forwards is never refused here; anything longer is a 400 that quotes nothing.
MAX_HEADER_BYTES = 64 * 1024 + 4096
# The collector's thresholds while serving. With Python's default (a young collection per
# 700 net new objects, an older one per 10 of those) a burst of new streams, each holding
# about 80 objects while it runs, set off collection after collection that walked the
# open streams' objects again and again: 40 ms of CPU in each burst of 256 streams, spent
# while their first tokens waited. Per 20,000 new objects they are walked about once.
# Garbage in a cycle waits longer for it: what requests leave in cycles is a closed
# connection's seven small objects, never a body (large, malformed, refused, unroutable
# and abandoned requests were checked with gc.DEBUG_SAVEALL), and a finished request of
# any face, streamed or not, leaves none of the gateway's own (tests/test_no_cycles.py).
GC_THRESHOLDS = (20_000, 3, 10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the sidecar (unix socket, or TCP with GATEWAY_PORT)")
    check = commands.add_parser("check-config", help="validate gateway.yaml and exit")
    check.add_argument(
        "path", nargs="?", type=Path, help="default: $GATEWAY_CONFIG or ./gateway.yaml"
    )
    commands.add_parser("up", help="run fake backends, the sidecar and Caddy; print how to connect")
    mock = commands.add_parser("mock-backends", help="run a fake model server on loopback")
    mock.add_argument(
        "--kind",
        choices=(
            "openai",
            "a1111",
            "openai-images",
            "heartmula",
            "model-server",
            "ollama-lifecycle",
            "llama-router",
            "vllm-sleep",
        ),
        default="openai",
        help="openai: chat/completions/embeddings, audio (mock-whisper, mock-tts) and "
        "rerank (mock-rerank); a1111: stable-diffusion-webui; "
        "openai-images: an InvokeAI/ComfyUI-style image shim; heartmula: a music shim; "
        "model-server: a model server for the gateway to run (process:), slow to get ready; "
        "ollama-lifecycle, llama-router, vllm-sleep: servers with their own load/unload hooks",
    )
    mock.add_argument(
        "--audio-dir", type=Path, default=Path("var/mock-heartmula"), help="heartmula's files"
    )
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=9101)
    mock.add_argument("--latency-ms", type=float, default=0.0)
    mock.add_argument("--chunk-delay-ms", type=float, default=20.0)
    mock.add_argument("--chunks", type=int, default=4)
    mock.add_argument("--model", action="append", help="model-server: a model id it serves")
    mock.add_argument("--ready-delay-s", type=float, default=0.5, help="model-server: load time")
    mock.add_argument("--memory-mb", type=float, default=1000.0, help="model-server: its size")
    _keys_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "keys":
        return keys_command(args)
    if args.command == "serve":
        return serve()
    if args.command == "up":
        from .launcher import up

        return up()
    if args.command == "check-config":
        return check_config(args.path)
    return run_mock(args)


def _configure_logging(level: str) -> Callable[[], None]:
    """Diagnostics to stderr and the JSON access log to stdout, written by threads.

    Diagnostics go through a queue; access lines are batched (one write per interval,
    not per request). Neither lets a slow terminal or a full pipe stall the event loop.
    Returns the function that flushes and stops both at exit.
    """
    logging.logProcesses = False  # no getpid() per record on the hot path
    logging.logThreads = False
    logging.logMultiprocessing = False
    errors = logging.StreamHandler(sys.stderr)
    errors.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root = logging.getLogger()
    queued = logging.handlers.QueueHandler(records)
    queued.addFilter(_malformed_http_in_one_line)  # before the record is formatted
    root.handlers[:] = [queued]
    root.setLevel(getattr(logging, level, logging.INFO))
    listener = logging.handlers.QueueListener(records, errors, respect_handler_level=True)
    listener.start()
    access_writer = BatchedLineWriter(sys.stdout)
    access_writer.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("gateway.access")
    access.propagate = False
    access.handlers[:] = [access_writer]
    access.setLevel(logging.INFO)

    def stop() -> None:
        access_writer.close()
        listener.stop()

    return stop


def _malformed_http_in_one_line(record: logging.LogRecord) -> bool:
    """A client's malformed HTTP (aiohttp answers 400) is a warning, not a traceback.

    Only the kind of error is logged: aiohttp's message quotes the offending bytes (the
    start of an oversized header's value, which may be a secret).
    """
    error = record.exc_info[1] if record.exc_info else None
    if record.name == "aiohttp.server" and isinstance(error, HttpProcessingError):
        record.msg, record.args = "malformed HTTP from a client: %s", (type(error).__name__,)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
    return True


def check_config(path: Path | None) -> int:
    """Validate the config and say what is wrong; never a traceback, whatever the file."""
    env = dict(os.environ)
    if path is not None:
        env["GATEWAY_CONFIG"] = str(path)
    # Checking a config needs no token; do not fail on the one this shell may have.
    env["GATEWAY_BEARER_TOKEN"] = "check-config-needs-no-real-token"  # noqa: S105
    env.pop("GATEWAY_BEARER_TOKENS", None)
    where = str(path or env.get("GATEWAY_CONFIG") or "the config")
    try:
        settings = Settings.from_env(env)
        config = asyncio.run(load_checked(settings))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        count = len(exc.issues)
        print(exc.render(), file=sys.stderr)
        print(f"{exc.source}: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    except RecursionError:
        print(f"{where}: nested too deeply to load", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"{where}: out of memory while loading", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug in the checker: say so in one line, not a traceback
        print(f"{where}: cannot check: {type(exc).__name__}", file=sys.stderr)
        return 1
    print(
        f"{settings.config_path}: OK ({len(config.backends)} backends, "
        f"{len(config.aliases)} aliases)"
    )
    return 0


def new_serving_loop() -> asyncio.AbstractEventLoop:
    """The event loop ``gateway serve`` runs on: uvloop's (libuv, in C) where it is
    installed (a dependency everywhere but Windows), asyncio's otherwise. Every streamed
    event is a socket read and a write with a few callbacks around them; uvloop makes
    those callbacks C, about 10 % less CPU per relayed event. The test suite runs on the
    same loop (``tests/conftest.py``)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"gateway: cannot start: {exc}", file=sys.stderr)
        return 2
    stop_logging = _configure_logging(settings.log_level)
    raise_open_file_limit()
    try:
        config = asyncio.run(load_checked(settings))
    except ConfigError as exc:
        print(f"gateway: cannot start: invalid config:\n{exc.render()}", file=sys.stderr)
        return 2
    try:
        if not settings.uses_tcp:
            _prepare_socket_dir(settings.sidecar_socket)
        with asyncio.Runner(loop_factory=new_serving_loop) as runner:
            runner.run(_serve(settings, config))  # the app serves the config checked here
    except OSError as exc:
        print(f"gateway: cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_logging()
    return 0


class _QuietRequestHandler(RequestHandler):
    """Answers a request aiohttp cannot parse with its status alone.

    aiohttp's own 400 body is the parser's message, which quotes up to 100 bytes of the
    offending line: an oversized header would be echoed back.
    """

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != HTTPStatus.INTERNAL_SERVER_ERROR:
            message = f"{status} {HTTPStatus(status).phrase}"
        return super().handle_error(request, status, exc, message)


class _QuietServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _QuietRequestHandler(self, loop=self._loop, **self._kwargs)


class _GatewayRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _QuietServer  # same state, only the connections' class differs
        return server


def _check_backlog() -> None:
    try:
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return
    if somaxconn < LISTEN_BACKLOG:
        log.warning(
            "the kernel caps the listen backlog at %d (net.core.somaxconn), below the "
            "gateway's %d: raise it (sysctl -w net.core.somaxconn=%d) for bursts",
            somaxconn,
            LISTEN_BACKLOG,
            LISTEN_BACKLOG,
        )


async def _serve(settings: Settings, config: GatewayConfig | None = None) -> None:
    runner = _GatewayRunner(
        create_app(settings, config),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=30,
        max_line_size=MAX_HEADER_BYTES,
        max_field_size=MAX_HEADER_BYTES,
    )
    _check_backlog()
    try:
        # Inside the try: a start-up step that fails still closes what earlier steps opened.
        await runner.setup()
        if settings.uses_tcp:
            site: web.BaseSite = web.TCPSite(
                runner, settings.host, settings.port, backlog=LISTEN_BACKLOG
            )
            await site.start()
        else:
            site = await _unix_site(runner, settings.sidecar_socket)
        # Everything start-up built lives as long as the process: out of the collector's
        # way, so a full collection walks only what requests allocate (shorter pauses).
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        log.info("gateway serving on %s", site.name)
        await _until_stopped()
    finally:
        await runner.cleanup()
        if not settings.uses_tcp:
            with contextlib.suppress(OSError):
                os.unlink(settings.sidecar_socket)


async def _unix_site(runner: web.AppRunner, path: Path) -> web.UnixSite:
    """Bind the socket with mode 0660 from the start (Caddy reaches it via the group)."""
    old_umask = os.umask(0o117)
    try:
        site = web.UnixSite(runner, str(path), backlog=LISTEN_BACKLOG)
        await site.start()
    finally:
        os.umask(old_umask)
    return site


def _prepare_socket_dir(path: Path) -> None:
    """Create the socket's directory and clear a stale socket left by a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        if _socket_alive(path):
            raise OSError(f"another gateway is already listening on {path}")
        path.unlink()


def _socket_alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)


def _fake(factory: Callable[..., web.Application]) -> Callable[..., web.Application]:
    def make(models: tuple[str, ...] | None, delay_s: float) -> web.Application:
        return factory(models, delay_s) if models else factory(load_delay_s=delay_s)

    return make


_LIFECYCLE_FAKES = {
    "ollama-lifecycle": _fake(create_ollama_lifecycle_app),
    "llama-router": _fake(create_llama_router_app),
    "vllm-sleep": _fake(create_vllm_sleep_app),
}


def run_mock(args: argparse.Namespace) -> int:
    stop_logging = _configure_logging("INFO")
    if args.kind == "a1111":
        app = create_a1111_app(latency_ms=args.latency_ms)
    elif args.kind == "openai-images":
        app = create_openai_images_app(latency_ms=args.latency_ms)
    elif args.kind == "heartmula":
        app = create_heartmula_app(args.audio_dir, latency_ms=args.latency_ms)
    elif args.kind in _LIFECYCLE_FAKES:
        models = tuple(args.model) if args.model else None
        app = _LIFECYCLE_FAKES[args.kind](models, args.ready_delay_s)
    elif args.kind == "model-server":
        app = create_model_server_app(
            tuple(args.model or ["mock-llama"]),
            args.ready_delay_s,
            args.memory_mb,
            args.chunk_delay_ms,
            args.chunks,
        )
    else:
        behaviour = MockBehaviour(
            latency_ms=args.latency_ms, chunk_delay_ms=args.chunk_delay_ms, chunks=args.chunks
        )
        app = create_mock_app(behaviour)

    async def run() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            # The gateway's backlog: a burst of new connections (a benchmark's first
            # wave) is not met by dropped SYNs and one-second retransmits.
            await web.TCPSite(runner, args.host, args.port, backlog=LISTEN_BACKLOG).start()
            log.info("mock %s backend serving on http://%s:%d", args.kind, args.host, args.port)
            await _until_stopped()
        finally:
            await runner.cleanup()

    try:
        # The loop ``gateway serve`` runs on. In tools/bench.py a fake backend shares a
        # core with the server measured; uvloop's callbacks in C leave more of it to that
        # server.
        with asyncio.Runner(loop_factory=new_serving_loop) as loop_runner:
            loop_runner.run(run())
    except OSError as exc:
        print(f"gateway mock-backends: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_logging()
    return 0


# -- gateway keys ----------------------------------------------------------------------------


def _keys_parser(commands: Any) -> None:
    keys = commands.add_parser(
        "keys",
        help="create, list, revoke, rotate API keys (in $GATEWAY_DATA_DIR/keys.sqlite3)",
        description="API keys in the database the running gateway uses ($GATEWAY_DATA_DIR); "
        "it sees a change within a second. A new key is printed alone on stdout, once.",
    )
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key; prints it (only now) on stdout")
    create.add_argument("name")
    create.add_argument("--models", help="model or alias globs, comma-separated (e.g. 'llama*')")
    create.add_argument("--endpoints", help=f"comma-separated: {', '.join(ENDPOINTS)}")
    create.add_argument("--tools", help="tool names, comma-separated")
    for limit, what in (
        ("--rpm", "requests per minute"),
        ("--tpm", "tokens per minute"),
        ("--tokens-per-day", "tokens per UTC day"),
        ("--concurrency", "requests at once"),
    ):
        create.add_argument(limit, type=int, help=what)
    create.add_argument("--expires-days", type=float, help="the key stops working after this")
    create.add_argument("--admin", action="store_true", help="may read every record and usage")
    listing = actions.add_parser("list", help="every key: name, prefix, scopes, limits, status")
    listing.add_argument("--json", action="store_true", help="one JSON document on stdout")
    revoke = actions.add_parser("revoke", help="the key stops working at once")
    revoke.add_argument("name")
    rotate = actions.add_parser("rotate", help="a new key for NAME; the old one stops at once")
    rotate.add_argument("name")


def keys_command(args: argparse.Namespace) -> int:
    """``gateway keys ACTION``: 0 done; 1 not found or refused; 2 bad input or no database."""
    env = dict(os.environ)
    data_dir = Path(env.get("GATEWAY_DATA_DIR") or "var")
    try:
        database = KeyDatabase(data_dir / "keys.sqlite3")
    except DatabaseError as exc:
        print(f"gateway keys: {exc}", file=sys.stderr)
        return 2
    try:
        return _keys_action(args, database, env)
    except InvalidRequest as exc:
        print(f"gateway keys: {exc.message}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"gateway keys: the keys database failed: {exc}", file=sys.stderr)
        return 1
    finally:
        database.close()


def _keys_action(args: argparse.Namespace, database: KeyDatabase, env: dict[str, str]) -> int:
    if args.action == "list":
        listed = [key.public() for key in database.list_keys()]
        if args.json:
            print(json.dumps({"data": listed}, indent=2))
        else:
            for entry in listed:
                print(_key_line(entry))
            if not listed:
                print("no API keys yet: gateway keys create NAME", file=sys.stderr)
        return 0
    name = args.name
    if args.action == "create":
        static = _static_token_names(env)
        if name in static:
            print(
                f"gateway keys: {name!r} is the name of a static token (GATEWAY_BEARER_TOKEN(S));"
                " pick another name",
                file=sys.stderr,
            )
            return 2
        values: dict[str, Any] = {"admin": args.admin}
        for field in ("models", "endpoints", "tools"):
            if getattr(args, field) is not None:
                items = getattr(args, field).split(",")
                values[field] = [item.strip() for item in items if item.strip()]
        for field in ("rpm", "tpm", "tokens_per_day", "concurrency", "expires_days"):
            if getattr(args, field) is not None:
                values[field] = getattr(args, field)
        try:
            key, new_key = database.create(name, values)
        except KeyError:
            print(
                f"gateway keys: a key named {name!r} exists; revoke or rotate it", file=sys.stderr
            )
            return 1
        print(new_key)
        print(f"created {_key_line(key.public())}", file=sys.stderr)
        print("the key is shown only now: copy it", file=sys.stderr)
        return 0
    if args.action == "revoke":
        if not database.revoke(name):
            print(f"gateway keys: no active key named {name!r}", file=sys.stderr)
            return 1
        print(f"revoked {name}", file=sys.stderr)
        return 0
    secret = database.rotate(name)
    if secret is None:
        print(f"gateway keys: no active key named {name!r}", file=sys.stderr)
        return 1
    print(secret)
    print(
        f"rotated {name}: the old key stopped working; the new one is shown only now",
        file=sys.stderr,
    )
    return 0


def _key_line(key: dict[str, Any]) -> str:
    parts = [f"{key['name']}  {key['prefix']}…  {key['status']}"]
    if key["admin"]:
        parts.append("admin")
    for field in ("models", "endpoints", "tools"):
        if key[field] is not None:
            parts.append(f"{field}={','.join(key[field])}")
    for field in ("rpm", "tpm", "tokens_per_day", "concurrency"):
        if key[field] is not None:
            parts.append(f"{field}={key[field]}")
    if key["expires_at"] is not None:
        parts.append("expires " + time.strftime("%Y-%m-%d", time.gmtime(key["expires_at"])))
    return "  ".join(parts)


def _static_token_names(env: dict[str, str]) -> set[str]:
    """The names of the environment's static tokens, when it has valid ones."""
    try:
        tokens = parse_bearer_tokens(
            env.get("GATEWAY_BEARER_TOKEN"),
            env.get("GATEWAY_BEARER_TOKENS"),
            env.get("GATEWAY_ADMIN_TOKENS"),
        )
    except SettingsError:
        return set()
    return {token.name for token in tokens}
