"""The live set of backends built from one config, and how it is swapped on reload.

A ``Registry`` is immutable once built. On reload a new one is built beside the old: a
backend whose connection settings did not change keeps its client session, health state
and admission counters; a replaced client is retired and closes once its last request
ends, so requests in flight are untouched by a reload.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ..config.schema import BackendConfig, GatewayConfig
from ..ports import free_port
from .admission import Admission
from .upstream import BackendClient


class HealthState:
    UNKNOWN = "unknown"
    READY = "ready"
    NOT_READY = "not_ready"
    DOWN = "down"
    # Down for a reason only the admin can fix (TLS verification, a rejected client
    # certificate, credentials the backend refuses): a 502 naming it, not "retry shortly".
    MISCONFIGURED = "misconfigured"


@dataclass
class Health:
    state: str = HealthState.UNKNOWN
    checked_at: float | None = None
    error: str | None = None
    code: str | None = None  # the error code a request gets while misconfigured
    consecutive_failures: int = 0
    next_probe_at: float = 0.0
    probing: bool = False

    @property
    def routable(self) -> bool:
        return self.state in (HealthState.READY, HealthState.UNKNOWN)


class Release(Protocol):
    def release(self) -> None: ...


class Lifecycle(Protocol):
    """A backend whose model is loaded on demand (``routing.lifecycle``): a call enters it
    after its admission slot (waiting for the load, within its budget from ``started``, a
    ``time.monotonic()``; ``model`` is the upstream model the call names, if any) and
    releases it on the way out."""

    async def enter(self, started: float, model: str | None) -> Release: ...


class Backend:
    """A configured backend at run time: its client, health and admission limits."""

    # Set by the lifecycle manager for a backend it loads on demand; None: always there.
    lifecycle: Lifecycle | None = None

    def __init__(
        self,
        config: BackendConfig,
        client: BackendClient,
        health: Health,
        admissions: Mapping[str, Admission],
        discovered: tuple[str, ...] | None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.client = client
        self.health = health
        self.admissions = dict(admissions)
        self.discovered = discovered
        self._static = (
            {model.id: model.capabilities for model in config.models}
            if config.models is not None
            else None
        )

    @property
    def model_ids(self) -> tuple[str, ...]:
        if self._static is not None:
            return tuple(self._static)
        return self.discovered or ()

    @property
    def models_known(self) -> bool:
        return self._static is not None or self.discovered is not None

    def serves(self, model: str) -> bool:
        if self._static is not None:
            return model in self._static
        return self.discovered is not None and model in self.discovered

    def supports(self, model: str, capability: str) -> bool:
        return capability in self.capabilities(model)

    def capabilities(self, model: str) -> frozenset[str]:
        """What ``model`` serves here: its own list in the YAML, else by its name
        (``model_capabilities`` and the defaults), within the backend's capabilities."""
        if self._static is not None and model in self._static:
            return self._static[model]
        return self.config.capabilities_of(model)


class Registry:
    def __init__(self, config: GatewayConfig, backends: Iterable[Backend]) -> None:
        self.config = config
        self.backends = {backend.name: backend for backend in backends}
        self.loaded_at = time.time()

    def get(self, name: str) -> Backend | None:
        return self.backends.get(name)

    def clients(self) -> list[BackendClient]:
        return [backend.client for backend in self.backends.values()]


def build_registry(
    config: GatewayConfig, previous: Registry | None = None
) -> tuple[Registry, list[BackendClient]]:
    """A registry for ``config``, reusing what ``previous`` can lend.

    Returns the registry and the previous clients that are no longer used, for the caller
    to retire once the new registry is in place.
    """
    reused: set[int] = set()
    backends = []
    for backend_config in config.backends:
        old = previous.get(backend_config.name) if previous else None
        backends.append(_backend(backend_config, old, reused))
    retired = [
        client for client in (previous.clients() if previous else []) if id(client) not in reused
    ]
    return Registry(config, backends), retired


def _backend(config: BackendConfig, old: Backend | None, reused: set[int]) -> Backend:
    config = _with_port(config, old)
    same_connection = old is not None and old.config.connection_key() == config.connection_key()
    if old is not None and same_connection:
        client = old.client
        client.config = config
        reused.add(id(client))
    else:
        client = BackendClient(config)
    admissions = {}
    for capability in sorted(config.capabilities):
        limit = config.limits[capability]
        admission = old.admissions.get(capability) if old is not None else None
        if admission is None:
            admission = Admission(
                f"backend '{config.name}' ({capability})",
                limit,
                config.queue.max,
                config.queue.timeout_s,
            )
        else:
            admission.reconfigure(limit, config.queue.max, config.queue.timeout_s)
        admissions[capability] = admission
    keep_health = old is not None and old.config.url == config.url
    health = old.health if keep_health and old is not None else Health()
    discovered = old.discovered if keep_health and old is not None else None
    return Backend(config, client, health, admissions, discovered)


def _with_port(config: BackendConfig, old: Backend | None) -> BackendConfig:
    """A backend the gateway runs gets its loopback port for ``{port}``: the one it had
    before a reload, else a free one."""
    if config.process is None or config.url is None:
        return config
    port = None
    if old is not None and old.config.process is not None and old.config.url is not None:
        port = old.config.url.port
    return dataclasses.replace(config, url=config.url.with_port(port or free_port()))


class RegistryHolder:
    """The one mutable reference: the registry currently serving. Swapped atomically."""

    def __init__(self, registry: Registry) -> None:
        self.current = registry
        self.retired: list[BackendClient] = []

    def swap(self, registry: Registry, retired: list[BackendClient]) -> None:
        """Serve ``registry`` from now on; ``retired`` clients close once idle."""
        self.current = registry
        self.retired = [client for client in self.retired if not client.closed] + retired
        for client in retired:
            client.retire()

    async def close(self) -> None:
        for client in [*self.current.clients(), *self.retired]:
            await client.close()
