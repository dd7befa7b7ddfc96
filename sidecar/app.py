"""The app factory: every part of the sidecar is built here, from one ``Settings``.

There is no module-level app and no global state; the CLI and every test call
``create_app``. Long-lived parts (backend sessions, the health checker, the config
watcher) live in ``cleanup_ctx`` generators: set up before ``yield``, torn down after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from .agents.service import AgentRunner
from .agents.transcripts import RunStore
from .api import cors
from .api.middleware import bearer, front, prepare_headers
from .api.routes import setup_routes
from .auth import TokenSet
from .auth.keystore import UNAVAILABLE as KEYS_UNAVAILABLE
from .auth.keystore import KeyService, OnFailure, SqliteKeyStore
from .auth.limits import LocalLimiter
from .auth.signing import UrlSigner, load_or_create_secret
from .config.schema import GatewayConfig
from .images.store import ImageStore
from .music.tool import heartmula_generate
from .observability.metrics import GatewayMetrics
from .reload import ConfigReloader, load_checked
from .responses.api import store_lifecycle as responses_store
from .routing.health import HealthChecker, running
from .routing.lifecycle import LifecycleManager
from .routing.registry import RegistryHolder, build_registry
from .settings import Settings
from .storage import StorageMonitor, store_unavailable
from .toolbus.bus import ToolBus
from .toolbus.executors import BUILTINS
from .toolbus.log import ToolLog
from .typedefs import (
    AGENTS,
    HEALTH,
    IMAGE_STORE,
    KEYS,
    METRICS,
    MODELS,
    PRELOADED_CONFIG,
    REGISTRY,
    RELOADER,
    SETTINGS,
    STORAGE,
    TOKENS,
    TOOLBUS,
    UI_STATE,
    URL_SIGNER,
    USAGE,
)
from .ui.guard import security_headers, ui_guard
from .ui.routes import setup_ui_routes
from .ui.state import UiState
from .usage.ledger import UsageLedger
from .usage.store import SqliteUsageStore
from .users.store import UserStore, anonymous_csrf

log = logging.getLogger("gateway")


def create_app(settings: Settings, config: GatewayConfig | None = None) -> web.Application:
    """The whole sidecar; ``config``, when given, is used instead of loading it again."""
    tokens = TokenSet(settings.bearer_tokens)
    limiter = LocalLimiter()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[front, bearer(tokens, limiter, ui_guard)],
    )
    app[SETTINGS] = settings
    app[TOKENS] = tokens
    app[STORAGE] = StorageMonitor(settings.data_dir)
    app[KEYS] = KeyService(
        SqliteKeyStore(settings.keys_db_path, _keys_unavailable(app[STORAGE])), tokens, limiter
    )
    app[IMAGE_STORE] = ImageStore(settings.image_dir, app[STORAGE])
    app[METRICS] = GatewayMetrics()
    if config is not None:
        app[PRELOADED_CONFIG] = config
    app.cleanup_ctx.append(_loop_lag)
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(_keys)
    app.cleanup_ctx.append(_registry)
    app.cleanup_ctx.append(_health_checks)
    app.cleanup_ctx.append(_config_reload)
    app.cleanup_ctx.append(_models)
    app.cleanup_ctx.append(_images)
    app.cleanup_ctx.append(_toolbus)
    app.cleanup_ctx.append(_ui)
    if settings.usage.enabled:
        app[USAGE] = UsageLedger(
            SqliteUsageStore(settings.usage_db_path), settings.usage, app[METRICS], app[STORAGE]
        )
        app.cleanup_ctx.append(_usage)
    app.cleanup_ctx.append(responses_store)
    app.on_response_prepare.append(prepare_headers(security_headers, cors.headers))
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(settings.templates_dir),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    )
    setup_routes(app)
    setup_ui_routes(app, settings.templates_dir)
    return app


async def _loop_lag(app: web.Application) -> AsyncIterator[None]:
    """The event-loop lag gauge of ``/metrics``: one small task, off every request's path."""
    task = asyncio.create_task(app[METRICS].loop_lag.run())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _storage(app: web.Application) -> AsyncIterator[None]:
    """Re-probe the data directory while writes fail, so the gateway recovers by itself."""
    task = asyncio.create_task(app[STORAGE].watch())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _keys_unavailable(storage: StorageMonitor) -> OnFailure:
    return lambda exc: store_unavailable(storage, exc, "keys database", KEYS_UNAVAILABLE)


async def _keys(app: web.Application) -> AsyncIterator[None]:
    """The API keys (read before the first request) and the task that follows changes
    and saves the limit windows; the windows are saved once more at shutdown."""
    keys = app[KEYS]
    await keys.start()
    task = asyncio.create_task(keys.watch())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await keys.stop()


async def _registry(app: web.Application) -> AsyncIterator[None]:
    """Load the config (a bad one stops start-up) and open the backends' sessions.

    ``gateway serve`` has loaded and checked the config already and hands it over in
    ``PRELOADED_CONFIG``, so it is read once.
    """
    config = app.get(PRELOADED_CONFIG) or await load_checked(app[SETTINGS])
    registry, _ = build_registry(config)
    holder = RegistryHolder(registry)
    app[REGISTRY] = holder
    log.info("config %s loaded: %d backends", config.source, len(config.backends))
    try:
        yield
    finally:
        await holder.close()


async def _health_checks(app: web.Application) -> AsyncIterator[None]:
    checker = HealthChecker(app[REGISTRY])
    app[HEALTH] = checker
    async with running(checker):
        yield


async def _images(app: web.Application) -> AsyncIterator[None]:
    """The URL-signing key (made once), and pruning of images past their retention."""
    settings = app[SETTINGS]
    secret = settings.images.url_secret
    key = (
        secret.encode()
        if secret
        else await asyncio.to_thread(
            load_or_create_secret, settings.data_dir / "secrets" / "image_url.key"
        )
    )
    app[URL_SIGNER] = UrlSigner(key, settings.images.url_ttl_s)
    retention_s = settings.images.retention_hours * 3600
    task = (
        asyncio.create_task(_prune_forever(app[IMAGE_STORE], retention_s)) if retention_s else None
    )
    yield
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _prune_forever(store: ImageStore, retention_s: float) -> None:
    interval = min(3600.0, max(1.0, retention_s / 4))
    while True:
        try:
            removed = await asyncio.to_thread(store.prune, retention_s)
        except OSError as exc:
            log.warning("pruning images failed: %s", exc)
        else:
            if removed:
                log.info("pruned %d images older than the retention", removed)
        await asyncio.sleep(interval)


async def _toolbus(app: web.Application) -> AsyncIterator[None]:
    """The tool bus on the current config's tools, following every reload."""
    settings = app[SETTINGS]
    log_ = ToolLog(settings.tools.log_mode, settings.tool_log_path, settings.tool_log_dir)
    # Opened first: if anything after it fails, start-up stops and the log is closed.
    await asyncio.to_thread(log_.open)
    try:
        builtins = {**BUILTINS, "heartmula_generate": heartmula_generate}
        metrics = app[METRICS]
        bus = ToolBus(
            app[REGISTRY],
            log_,
            settings.environ,
            settings.tools.allowlist,
            builtins,
            observer=metrics.observe_tool,
            storage=app[STORAGE],
            protected=_protected_folders(settings),
        )
        bus.configure(app[REGISTRY].current.config)
        app[RELOADER].listeners.append(bus.configure)
        app[TOOLBUS] = bus
        app[AGENTS] = AgentRunner(
            app[REGISTRY],
            bus,
            RunStore(settings.agent_runs_dir, app[STORAGE]),
            observer=metrics.observe_agent,
        )
        yield
    finally:
        await asyncio.to_thread(log_.close)


def _protected_folders(settings: Settings) -> tuple[Path, ...]:
    """Where the gateway keeps what a sandboxed tool must never see mounted."""
    folders = {
        settings.data_dir,
        settings.tool_log_path.parent,
        settings.tool_log_dir,
        settings.image_dir,
        settings.user_db_path.parent,
        settings.agent_runs_dir,
    }
    return tuple(sorted(folders))


async def _ui(app: web.Application) -> AsyncIterator[None]:
    """The users database (opened off the loop) and what the UI needs without accounts."""
    settings = app[SETTINGS]
    users = UserStore(
        settings.user_db_path,
        settings.ui.session_idle_s,
        settings.ui.session_max_s,
        settings.ui.login,
        app[STORAGE],
    )
    await users.open()
    try:  # a failure after the database opened still closes it
        local_user = await users.run(lambda db: db.local_user())
        secret = await asyncio.to_thread(
            load_or_create_secret, settings.data_dir / "secrets" / "ui.key"
        )
        state = UiState(users, local_user, anonymous_csrf(secret))
        app[UI_STATE] = state
        yield
        if state.pending:
            await asyncio.gather(*state.pending, return_exceptions=True)
    finally:
        await users.close()


async def _usage(app: web.Application) -> AsyncIterator[None]:
    """The usage ledger's database (opened off the loop) and its writer thread; what is
    still queued is written before the app stops."""
    ledger = app[USAGE]
    await asyncio.to_thread(ledger.start, app[REGISTRY])
    yield
    await asyncio.to_thread(ledger.stop)


async def _models(app: web.Application) -> AsyncIterator[None]:
    """The model processes the gateway runs; every one is stopped on the way out."""
    settings = app[SETTINGS]
    manager = LifecycleManager(
        app[REGISTRY], settings.data_dir, settings.environ, app[METRICS].observe_model
    )
    app[MODELS] = manager
    app[METRICS].watch_models(manager)
    app.on_shutdown.append(_end_event_streams)
    try:
        await manager.start()
        app[RELOADER].listeners.append(manager.reconfigure)
        yield
    finally:
        await manager.close()


async def _end_event_streams(app: web.Application) -> None:
    """Open event streams end before the server waits for its connections to close."""
    app[MODELS].hub.close()


async def _config_reload(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    reloader = ConfigReloader(settings, app[REGISTRY])
    app[RELOADER] = reloader
    app[METRICS].watch(app[REGISTRY], reloader)
    tasks: set[asyncio.Task[object]] = set()

    def on_sighup() -> None:
        task = asyncio.ensure_future(reloader.reload("SIGHUP"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    if settings.config_poll_s > 0:
        tasks.add(asyncio.create_task(reloader.watch()))
    yield
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.remove_signal_handler(signal.SIGHUP)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
