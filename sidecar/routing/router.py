"""Model → backend resolution and the checks before a request may run.

An API key limited to some models gets a 403 for any other, before anything else.
Resolution order: alias, ``backend/model`` prefix, backend model lists (first backend in
config order that has the capability); then the checks, in this order: capability (400),
readiness (503 + Retry-After while transient; 502 naming the reason while the backend is
misconfigured), admission (429 or a bounded queue wait). No fallback to
another backend unless the YAML asks for it.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ..auth.scope import allows_model, require_model
from ..config.schema import AliasConfig
from ..errors import (
    BackendNotReady,
    CapabilityNotSupported,
    InvalidRequest,
    UnknownModel,
    UpstreamUnavailable,
)
from .call import backend_call
from .registry import Backend, HealthState, Registry


@dataclass(frozen=True)
class Route:
    backend: Backend
    upstream_model: str
    capability: str
    alias: AliasConfig | None = None

    def headers(self) -> dict[str, str]:
        """``X-Backend-Used`` / ``X-Model-Used``, safe to put in a header whatever the name."""
        model = self.upstream_model or self.backend.name
        if not (model.isascii() and model.isprintable()):
            model = urllib.parse.quote(model, safe="")
        return {"X-Backend-Used": self.backend.name, "X-Model-Used": model}


def resolve(registry: Registry, model: str, capability: str) -> Route:
    # The calling API key's model scope (403) is checked first, on every face, against
    # the names the model stands for: the same answer whether it exists or not.
    alias = registry.config.aliases.get(model)
    if alias is not None:
        require_model(model)
        backend = registry.backends[alias.backend]
        return checked(Route(backend, alias.model, capability, alias), model)
    prefix, sep, rest = model.partition("/")
    prefixed = registry.get(prefix) if sep and rest else None
    if prefixed is not None:
        require_model(model, rest)
        if prefixed.models_known and not prefixed.serves(rest):
            raise _unknown(model)
        return checked(Route(prefixed, rest, capability), model)
    require_model(model)
    serving = [backend for backend in registry.backends.values() if backend.serves(model)]
    if not serving:
        raise _unknown(model)
    for backend in serving:
        if backend.supports(model, capability):
            return checked(Route(backend, model, capability), model)
    raise CapabilityNotSupported(f"model '{model}' does not support {capability}", param="model")


def allowed(registry: Registry, name: str) -> bool:
    """Whether the calling key may use the model ``name`` as ``resolve`` would route it:
    listings show exactly what a request may reach."""
    if name in registry.config.aliases:
        return allows_model(name)
    prefix, sep, rest = name.partition("/")
    if sep and rest and registry.get(prefix) is not None:
        return allows_model(name, rest)
    return allows_model(name)


def checked(route: Route, requested: str) -> Route:
    """The route, once its capability and its backend's readiness allow it."""
    backend = route.backend
    if not backend.supports(route.upstream_model, route.capability):
        raise CapabilityNotSupported(
            f"model '{requested}' does not support {route.capability}", param="model"
        )
    health = backend.health
    if health.state == HealthState.MISCONFIGURED:
        raise UpstreamUnavailable(
            health.error or f"backend '{backend.name}' is misconfigured",
            code=health.code or "upstream_error",
            headers={"X-Backend-Used": backend.name},
        )
    if not health.routable:
        raise BackendNotReady(
            f"backend '{backend.name}' serving '{requested}' is not ready "
            f"({backend.health.state}); retry shortly",
            retry_after=max(1, math.ceil(backend.config.health.interval_s)),
            headers={"X-Backend-Used": backend.name},
        )
    return route


def resolve_default(registry: Registry, model: str | None, capability: str) -> Route:
    """A known model with the capability, else the first backend that has it.

    For capabilities such as images, clients often send a model name the gateway does
    not route (``dall-e-3``); that name then goes to the default backend as is.
    """
    if model is not None:
        try:
            return resolve(registry, model, capability)
        except UnknownModel:
            pass
    for backend in registry.backends.values():
        if capability in backend.config.capabilities:
            return checked(Route(backend, model or "", capability), model or capability)
    raise UnknownModel(f"no backend of this gateway serves {capability}", param="model")


def upstream_body(payload: dict[str, Any], route: Route) -> dict[str, Any]:
    """The body sent upstream: the upstream model name, and an alias's caps applied."""
    upstream = {**payload, "model": route.upstream_model}
    alias = route.alias
    if alias is None:
        return upstream
    if not alias.tools and (payload.get("tools") or payload.get("functions")):
        raise InvalidRequest(f"model '{alias.name}' does not accept tools", param="tools")
    if alias.max_tokens_cap is not None:
        keys = [k for k in ("max_tokens", "max_completion_tokens") if upstream.get(k) is not None]
        for key in keys:
            _number(upstream[key], key)
        for key in keys or ["max_tokens"]:
            upstream[key] = min(upstream.get(key) or alias.max_tokens_cap, alias.max_tokens_cap)
    if alias.temperature_cap is not None:
        temperature = upstream.get("temperature")
        if temperature is not None:
            _number(temperature, "temperature")
        default = min(1.0, alias.temperature_cap)
        upstream["temperature"] = min(
            temperature if temperature is not None else default, alias.temperature_cap
        )
    return upstream


def _number(value: Any, name: str) -> None:
    """A capped field must be a number to be capped: a face that does not check it
    (embeddings, rerank) would otherwise fail on ``min`` with a 500."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"'{name}' must be a number", param=name)


async def complete(route: Route, endpoint: str, body: dict[str, Any], request_id: str) -> Any:
    """A whole non-streamed call for the gateway's own use (agents): admitted like any
    client request, its slot released when the answer is in."""
    async with backend_call(
        route.backend, route.capability, endpoint, upstream_body(body, route), request_id
    ) as call:
        _, reply = await call.read_json()
    return reply


def _unknown(model: str) -> UnknownModel:
    return UnknownModel(
        f"The model '{model}' does not exist or is not routed by this gateway; "
        "GET /v1/models lists what is available",
        param="model",
    )
