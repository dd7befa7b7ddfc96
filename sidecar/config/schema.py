"""The routing config as frozen data: what ``gateway.yaml`` means once validated."""

from __future__ import annotations

import fnmatch
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarl import URL

CAPABILITIES = (
    "chat",
    "completions",
    "embeddings",
    "images",
    "music",
    "transcriptions",  # /v1/audio/transcriptions and /v1/audio/translations
    "speech",  # /v1/audio/speech
    "rerank",  # /v1/rerank
    "responses",  # /v1/responses, passed through (opt-in)
)
# How the gateway talks to a backend: ``openai`` (chat, completions, embeddings at
# ``{url}/...``), ``a1111`` (stable-diffusion-webui's ``/sdapi/v1``), ``openai_images``
# (an InvokeAI/ComfyUI shim's ``{url}/v1/images/generations``), ``mock_images`` (the
# built-in SVG placeholder; no URL).
# ``heartmula`` is the HeartMuLa music shim (``{url}/v1/music/generations``).
# What each protocol can serve; a backend's capabilities must be among them.
PROTOCOL_CAPABILITIES: Mapping[str, tuple[str, ...]] = {
    "openai": (
        "chat",
        "completions",
        "embeddings",
        "transcriptions",
        "speech",
        "rerank",
        "responses",
    ),
    "a1111": ("images",),
    "openai_images": ("images",),
    "mock_images": ("images",),
    "heartmula": ("music",),
}

# Default concurrent requests per capability for each backend class. A backend's own
# ``limits`` and the YAML's ``classes`` section override these.
_CLASS_LIMITS: Mapping[str, Mapping[str, int]] = {
    "gpu_heavy": {"chat": 2, "completions": 2, "embeddings": 4, "images": 2, "music": 2},
    "gpu_light": {"chat": 4, "completions": 4, "embeddings": 8, "images": 2, "music": 2},
    "cpu": {"chat": 1, "completions": 1, "embeddings": 4, "images": 1, "music": 1},
    "remote": {"chat": 16, "completions": 16, "embeddings": 16, "images": 4, "music": 2},
    "mock": {"chat": 64, "completions": 64, "embeddings": 64, "images": 8, "music": 4},
}
# Audio is limited like chat, rerank like embeddings, in every class.
BUILTIN_CLASSES: Mapping[str, Mapping[str, int]] = {
    name: {
        **limits,
        "transcriptions": limits["chat"],
        "speech": limits["chat"],
        "rerank": limits["embeddings"],
        # A backend's native Responses API takes as many requests at once as its chat.
        "responses": limits["chat"],
    }
    for name, limits in _CLASS_LIMITS.items()
}
DEFAULT_CLASS = "gpu_light"
# What a backend of each protocol serves when its ``capabilities`` are not given: the
# audio and rerank endpoints are opted into, since most chat servers have none.
DEFAULT_CAPABILITIES: Mapping[str, tuple[str, ...]] = {
    "openai": ("chat", "completions", "embeddings"),
}
# What a model serves by its name, after a backend's own ``model_capabilities`` (globs,
# case-insensitive, first match wins); a model that matches none serves everything its
# backend does. Always limited to the backend's capabilities.
DEFAULT_MODEL_CAPABILITIES: tuple[tuple[str, frozenset[str]], ...] = (
    ("*rerank*", frozenset({"rerank"})),
    ("*embed*", frozenset({"embeddings"})),
    ("*whisper*", frozenset({"transcriptions"})),
    ("*transcribe*", frozenset({"transcriptions"})),
    ("*tts*", frozenset({"speech"})),
)


def capabilities_by_name(
    model: str, patterns: tuple[tuple[str, frozenset[str]], ...], backend: frozenset[str]
) -> frozenset[str]:
    """The first matching pattern's capabilities within the backend's, else all of them."""
    name = model.lower()
    for pattern, capabilities in patterns:
        if fnmatch.fnmatchcase(name, pattern):
            return capabilities & backend
    return backend


@dataclass(frozen=True)
class TlsConfig:
    verify: bool = True
    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    fingerprint: str = ""  # digest of the files' contents, so a rotated cert is noticed


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 5.0
    read_s: float = 300.0
    stream_idle_s: float = 120.0


@dataclass(frozen=True)
class HealthConfig:
    """Probe paths are absolute paths on the backend's origin."""

    liveness: str | None = None
    readiness: str | None = None
    interval_s: float = 10.0
    timeout_s: float = 3.0
    # No readiness path: ready when the backend's URL answers at all (below 500). The
    # default for a backend whose models are listed and that has no liveness path.
    reachability: bool = False


@dataclass(frozen=True)
class QueueConfig:
    """A bounded wait for a slot; ``max == 0`` means fail fast with 429."""

    max: int = 0
    timeout_s: float = 0.0


@dataclass(frozen=True)
class ModelConfig:
    id: str
    capabilities: frozenset[str]


@dataclass(frozen=True)
class ImagesConfig:
    """Image generation limits and defaults for a backend with the images capability."""

    max_pixels: int = 2_097_152
    model: str | None = None  # sent upstream when the request names none


@dataclass(frozen=True)
class ProcessConfig:
    """A model server the gateway runs: ``cmd`` (argv, no shell) with ``{port}`` replaced
    by a free loopback port, started on demand and stopped after ``ttl_s`` idle."""

    cmd: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    ready: str = "/health"  # polled until it answers 200
    start_timeout_s: float = 180.0
    ttl_s: float = 0.0  # 0: never unloaded for idleness
    group: str | None = None
    memory_mb: int = 0
    preload: bool = False
    pin: bool = False  # never evicted to make room
    drain_timeout_s: float = 30.0  # how long an eviction waits for requests in flight
    stop_timeout_s: float = 10.0  # SIGTERM, then SIGKILL after this long


@dataclass(frozen=True)
class GroupConfig:
    """Models sharing a device: a memory budget, or ``exclusive`` (one member loaded)."""

    name: str
    memory_mb: int | None = None
    exclusive: bool = False
    fairness_s: float = 5.0  # a busy member keeps serving this long before a swap


LIFECYCLES = ("ollama", "llama-server", "vllm-sleep")


@dataclass(frozen=True)
class BackendConfig:
    name: str
    url: URL | None  # None only for the built-in mock_images backend
    backend_class: str
    protocol: str
    capabilities: frozenset[str]
    limits: Mapping[str, int]
    queue: QueueConfig
    health: HealthConfig
    tls: TlsConfig
    timeouts: Timeouts
    models: tuple[ModelConfig, ...] | None  # None: discovered from the backend
    api_key: str | None = field(default=None, repr=False)
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    images: ImagesConfig = ImagesConfig()
    # The backend's ``model_capabilities`` (lower-cased globs), then the defaults.
    model_patterns: tuple[tuple[str, frozenset[str]], ...] = DEFAULT_MODEL_CAPABILITIES
    process: ProcessConfig | None = None  # a model server the gateway runs
    lifecycle: str | None = None  # a remote server's own load/unload hooks (LIFECYCLES)
    keep_alive: str | int | None = None  # lifecycle ollama: sent on every request
    # Built from ``tls`` when the config is loaded (https only); derived, so not compared.
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    def capabilities_of(self, model: str) -> frozenset[str]:
        """What a model without capabilities of its own serves, judged by its name."""
        return capabilities_by_name(model, self.model_patterns, self.capabilities)

    def connection_key(self) -> tuple[Any, ...]:
        """What the pooled client session depends on; equal keys can share one."""
        return (self.url, self.tls, self.timeouts.connect_s, self.api_key, self.basic_auth)


@dataclass(frozen=True)
class AliasConfig:
    name: str
    backend: str
    model: str
    max_tokens_cap: int | None = None
    temperature_cap: float | None = None
    tools: bool = True


TOOL_EXECUTORS = ("builtin", "subprocess", "http")


@dataclass(frozen=True)
class ToolSpec:
    """A tool on the bus: its contract (name, version, JSON Schema) and how it runs."""

    name: str
    version: str
    description: str
    parameters: Mapping[str, Any]  # a JSON Schema, checked against its metaschema
    executor: str  # builtin | subprocess | http
    builtin: str | None = None
    argv: tuple[str, ...] = ()
    env_allow: tuple[str, ...] = ()
    cwd: Path | None = None
    sandbox: str = "bwrap"  # bwrap | none (unconfined, warned at every load)
    network: bool = False  # in the sandbox: the host's network (default: none at all)
    read_only: tuple[Path, ...] = ()  # more paths the sandbox shows, read-only
    http_backend: str | None = None
    http_path: str | None = None
    timeout_s: float = 30.0
    concurrency: int = 4
    max_output_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class AgentSpec:
    """An agent: which model, which tools, and the budgets that stop it."""

    name: str
    model: str
    system_prompt: str
    tools: tuple[str, ...]
    max_turns: int = 6
    max_seconds: float = 300.0
    max_tool_output_chars: int = 20_000
    temperature: float = 0.0
    seed: int | None = 0


@dataclass(frozen=True)
class CorsConfig:
    """Browser origins allowed to call the API; empty: none (no CORS headers at all)."""

    allow_origins: frozenset[str] = frozenset()
    max_age_s: int = 600

    def allows(self, origin: str) -> bool:
        return "*" in self.allow_origins or origin.lower() in self.allow_origins


@dataclass(frozen=True)
class GatewayConfig:
    source: Path
    digest: str
    backends: tuple[BackendConfig, ...]
    aliases: Mapping[str, AliasConfig]
    tools: Mapping[str, ToolSpec] = field(default_factory=dict)
    # Token name -> the tools that token may call (tokens not listed: any allowed tool).
    token_tools: Mapping[str, frozenset[str]] = field(default_factory=dict)
    agents: Mapping[str, AgentSpec] = field(default_factory=dict)
    cors: CorsConfig = CorsConfig()
    groups: Mapping[str, GroupConfig] = field(default_factory=dict)

    def backend(self, name: str) -> BackendConfig | None:
        for backend in self.backends:
            if backend.name == name:
                return backend
        return None
