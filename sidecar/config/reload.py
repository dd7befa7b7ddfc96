"""Live reload of ``gateway.yaml``: validate, then swap the registry atomically.

Triggered by SIGHUP and by a change of the file (polled, so editors that replace the
file are seen too). A failed reload is logged and kept for ``/readyz``; the last good
config keeps serving and requests in flight keep the backends they started with.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..routing.registry import RegistryHolder, build_registry
from ..settings import Settings
from .loader import ConfigError, load_config
from .schema import GatewayConfig

log = logging.getLogger("gateway.config")


@dataclass(frozen=True)
class ReloadOutcome:
    ok: bool
    at: float
    reason: str
    digest: str | None = None
    error: str | None = None


async def load_checked(settings: Settings) -> GatewayConfig:
    """Load and validate the YAML and its TLS files off the loop; raises ``ConfigError``."""
    return await asyncio.to_thread(
        load_config,
        settings.config_path,
        settings.environ,
        settings.backend_tls,
        settings.images,
        settings.tools.registry_path,
        settings.tools.heartmula_base_url,
        settings.tools.agent_specs_path,
    )


class ConfigReloader:
    def __init__(self, settings: Settings, holder: RegistryHolder) -> None:
        self._settings = settings
        self._holder = holder
        self._lock = asyncio.Lock()
        self._files = [settings.config_path]
        for extra in (settings.tools.registry_path, settings.tools.agent_specs_path):
            if extra is not None:
                self._files.append(extra)
        self._stamp = _stamps(self._files)
        self.last: ReloadOutcome = ReloadOutcome(
            ok=True, at=time.time(), reason="start", digest=holder.current.config.digest
        )
        self.reloads_ok = 0
        self.reloads_refused = 0
        # Called with each newly swapped-in config (the tool bus takes its tools from it).
        self.listeners: list[Callable[[GatewayConfig], None]] = []

    async def reload(self, reason: str) -> ReloadOutcome:
        async with self._lock:
            self._stamp = await asyncio.to_thread(_stamps, self._files)
            try:
                config = await load_checked(self._settings)
            except ConfigError as exc:
                self.reloads_refused += 1
                log.error(
                    "config reload (%s) refused; keeping the last good config:\n%s", reason, exc
                )
                self.last = ReloadOutcome(False, time.time(), reason, error=exc.render())
                return self.last
            current = self._holder.current
            if config.digest != current.config.digest:
                registry, retired = build_registry(config, current)
                self._holder.swap(registry, retired)
                for listener in self.listeners:
                    listener(config)
                log.info("config reloaded (%s): %d backends", reason, len(config.backends))
            self.reloads_ok += 1
            self.last = ReloadOutcome(True, time.time(), reason, digest=config.digest)
            return self.last

    def _refused(self, reason: str, error: str) -> ReloadOutcome:
        self.reloads_refused += 1
        log.error("config reload (%s) refused; keeping the last good config:\n%s", reason, error)
        self.last = ReloadOutcome(False, time.time(), reason, error=error)
        return self.last

    async def watch(self) -> None:
        """Poll the file's identity and reload when it changes."""
        interval = self._settings.config_poll_s
        while True:
            await asyncio.sleep(interval)
            stamp = await asyncio.to_thread(_stamps, self._files)
            if stamp != self._stamp:
                await self.reload("file changed")


def _stamps(paths: list[Path]) -> list[tuple[int, int, int, int] | None]:
    return [_stamp(path) for path in paths]


def _stamp(path: os.PathLike[str]) -> tuple[int, int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
