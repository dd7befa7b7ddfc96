"""Live reload of ``gateway.yaml``: validate, then swap the registry atomically.

Triggered by SIGHUP and by a change of the file (polled, so editors that replace the
file are seen too). A failed reload is logged and kept for ``/readyz``; the last good
config keeps serving and requests in flight keep the backends they started with.

Reload cannot die: any exception from reading, validating or applying a config (not only
``ConfigError``: ``RecursionError``, ``MemoryError``, a bug in a listener) refuses that
reload, is logged and counted, and the watcher keeps polling. The CA bundles, client
certificates and keys the config names are watched with the YAML files, and their
contents are part of the config's digest, so rotating one takes effect on the next poll
or SIGHUP. The first good reload after a refused one logs "config restored".
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config.loader import load_config, tls_files
from .config.schema import GatewayConfig
from .errors import ConfigError
from .routing.registry import RegistryHolder, build_registry
from .settings import Settings

log = logging.getLogger("gateway.config")


@dataclass(frozen=True)
class ReloadOutcome:
    ok: bool
    at: float
    reason: str
    digest: str | None = None
    error: str | None = None  # the full text, for the admin behind the token
    issues: int = 0  # how many problems (what the open /readyz may show)

    def public(self) -> dict[str, Any]:
        """What any caller may see of it: never the error's text (paths, values)."""
        return {
            "ok": self.ok,
            "at": round(self.at, 3),
            "reason": self.reason,
            "issues": self.issues,
        }


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
        paths = self._watched()
        self._stamp = dict(zip(paths, _stamps(paths), strict=True))
        # The digest whose registry and listeners are fully in place.
        self._applied = holder.current.config.digest
        self.last: ReloadOutcome = ReloadOutcome(
            ok=True, at=time.time(), reason="start", digest=holder.current.config.digest
        )
        self.reloads_ok = 0
        self.reloads_refused = 0
        # Called with each newly swapped-in config (the tool bus takes its tools from it).
        self.listeners: list[Callable[[GatewayConfig], None]] = []

    def _watched(self) -> list[Path]:
        """The YAML/JSON files and the TLS files the serving config loads."""
        return [*self._files, *tls_files(self._holder.current.config)]

    async def reload(self, reason: str) -> ReloadOutcome:
        """Load, validate and apply the config; never raises (but for cancellation)."""
        async with self._lock:
            try:
                return await self._reload(reason)
            except ConfigError as exc:
                return self._refused(reason, exc.render(), len(exc.issues))
            except RecursionError:
                return self._refused(reason, "the config is nested too deeply to load", 1)
            except MemoryError:
                return self._refused(reason, "out of memory while loading the config", 1)
            except Exception as exc:  # a bug must not stop hot reload for good
                log.exception("config reload (%s) failed unexpectedly", reason)
                return self._refused(reason, f"unexpected error: {type(exc).__name__}", 1)

    async def _reload(self, reason: str) -> ReloadOutcome:
        paths = self._watched()
        self._stamp = dict(zip(paths, await asyncio.to_thread(_stamps, paths), strict=True))
        config = await load_checked(self._settings)
        current = self._holder.current
        if config.digest != self._applied:
            # Files the new config names (a new CA bundle, say) are watched from now on.
            # Stamped before the swap: from the swap to the outcome below there is no
            # await, so /readyz never shows the new config with the old outcome.
            wanted = [*self._files, *tls_files(config)]
            added = [path for path in wanted if path not in self._stamp]
            added_stamps = await asyncio.to_thread(_stamps, added)
            if config.digest != current.config.digest:
                registry, retired = build_registry(config, current)
                self._holder.swap(registry, retired)
                log.info("config reloaded (%s): %d backends", reason, len(config.backends))
            for listener in self.listeners:
                listener(config)
            self._applied = config.digest
            self._stamp.update(zip(added, added_stamps, strict=True))
        if not self.last.ok:
            log.warning("config restored (%s): serving %s again", reason, config.digest[:12])
        self.reloads_ok += 1
        self.last = ReloadOutcome(True, time.time(), reason, digest=config.digest)
        return self.last

    def _refused(self, reason: str, error: str, issues: int = 1) -> ReloadOutcome:
        self.reloads_refused += 1
        log.error("config reload (%s) refused; keeping the last good config:\n%s", reason, error)
        self.last = ReloadOutcome(False, time.time(), reason, error=error, issues=issues)
        return self.last

    async def watch(self) -> None:
        """Poll the files' identity and reload when one changes; survives anything."""
        interval = self._settings.config_poll_s
        while True:
            await asyncio.sleep(interval)
            try:
                paths = self._watched()
                stamps = await asyncio.to_thread(_stamps, paths)
                seen = [self._stamp.get(path, _UNSEEN) for path in paths]
                if seen != stamps:
                    await self.reload("file changed")
            except Exception:  # reload() catches its own; this guards the poll itself
                log.exception("config watcher: polling failed; retrying")


_UNSEEN: Any = object()
_Stamp = tuple[int, ...] | None


def _stamps(paths: list[Path]) -> list[_Stamp]:
    return [_stamp(path) for path in paths]


def _stamp(path: os.PathLike[str]) -> _Stamp:
    """The identity of the file and of the link to it (a swapped symlink is a change)."""
    stamp: tuple[int, ...] = ()
    for stat in (os.lstat, os.stat):
        try:
            info = stat(path)
        except (OSError, ValueError):
            stamp += (-1,)
            continue
        stamp += (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    return stamp
