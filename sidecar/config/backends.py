"""What ``gateway.yaml`` means: backends, classes, defaults and aliases as frozen data.

The schema has checked the structure; these are the checks that need more than one value
or the world outside the file: a backend's protocol decides whether it has a URL and what
it can serve, its class must exist, a limit needs the capability, TLS files must exist and
load, an alias must point at a declared backend and at a model that backend lists. A
backend with any problem is left out (so nothing else is checked against it twice).
Servers the gateway runs itself, their GPU groups and lifecycle hooks are checked in
``processes``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from yarl import URL

from ..errors import TlsSetupError
from ..settings import BackendTlsDefaults, ImagesSettings
from . import processes, structure
from .issues import Issues
from .schema import (
    BUILTIN_CLASSES,
    CAPABILITIES,
    DEFAULT_CAPABILITIES,
    DEFAULT_CLASS,
    DEFAULT_MODEL_CAPABILITIES,
    PROTOCOL_CAPABILITIES,
    AliasConfig,
    BackendConfig,
    GroupConfig,
    HealthConfig,
    ImagesConfig,
    ModelConfig,
    QueueConfig,
    Timeouts,
    TlsConfig,
    capabilities_by_name,
)
from .tls import build_ssl_context, fingerprint
from .values import flag, integer, listing, mapping, number, text

_ENV_IMAGE_PROTOCOLS = {
    "mock": "mock_images",
    "http_a1111": "a1111",
    "http_openai_images": "openai_images",
}
_UNSET: Any = "(unset)"
_DEFAULT_HEALTH = HealthConfig(readiness=_UNSET)


@dataclass(frozen=True)
class Defaults:
    """The ``defaults`` section over the environment's TLS defaults, and the classes."""

    timeouts: Timeouts
    health: HealthConfig
    tls: TlsConfig
    classes: Mapping[str, Mapping[str, int]]
    groups: Mapping[str, GroupConfig] = dataclasses.field(default_factory=dict)


class BackendReader:
    """Builds backends and aliases from checked plain values, reporting meaning problems."""

    def __init__(self, issues: Issues, base_dir: Path) -> None:
        self.issues = issues
        self.base_dir = base_dir

    def defaults(self, root: dict[str, Any], env_tls: BackendTlsDefaults) -> Defaults:
        spec = mapping(root.get("defaults"))
        env_base = TlsConfig(
            verify=env_tls.verify,
            ca_bundle=env_tls.ca_bundle,
            client_cert=env_tls.client_cert,
            client_key=env_tls.client_key,
        )
        classes = {name: dict(limits) for name, limits in BUILTIN_CLASSES.items()}
        for name, limits in mapping(root.get("classes")).items():
            merged = dict(classes.get(name, BUILTIN_CLASSES[DEFAULT_CLASS]))
            for capability, limit in mapping(limits).items():
                merged[capability] = integer(limit, 1)
            classes[name] = merged
        return Defaults(
            timeouts=self.timeouts(spec.get("timeouts"), Timeouts()),
            health=self.health(spec.get("health"), _DEFAULT_HEALTH),
            tls=self.tls(spec.get("tls"), "defaults.tls", env_base),
            classes=classes,
            groups=processes.groups(root.get("groups"), self.issues),
        )

    def backends(
        self,
        raw: dict[str, Any],
        defaults: Defaults,
        images_env: ImagesSettings | None,
        heartmula_url: str | None,
    ) -> list[BackendConfig]:
        if not raw:
            self.issues.error("backends", "at least one backend is required")
        backends = [self.backend(name, spec, defaults) for name, spec in raw.items()]
        built = [backend for backend in backends if backend is not None]
        if images_env is not None and not any("images" in b.capabilities for b in built):
            extra = self.images_from_env(images_env, defaults, set(raw))
            built.extend([extra] if extra is not None else [])
        if heartmula_url and not any("music" in b.capabilities for b in built):
            name = "music" if "music" not in raw else "music-env"
            spec = {"url": heartmula_url, "protocol": "heartmula", "class": "gpu_heavy"}
            extra = self.checked_backend(name, spec, defaults)
            built.extend([extra] if extra is not None else [])
        return built

    def checked_backend(
        self, name: str, spec: dict[str, Any], defaults: Defaults
    ) -> BackendConfig | None:
        """A backend made from settings rather than the YAML: the schema checks it too."""
        structure.check(spec, self.issues, structure.BACKEND, f"backends.{name}")
        return self.backend(name, spec, defaults)

    def backend(self, name: str, spec: Any, defaults: Defaults) -> BackendConfig | None:
        path = f"backends.{name}"
        spec = mapping(spec)
        protocol = text(spec.get("protocol")) or "openai"
        url = None
        if protocol == "mock_images":
            if "url" in spec:
                self.issues.error(f"{path}.url", "the built-in mock_images backend has no URL")
        elif isinstance(spec.get("process"), dict):
            url = processes.process_url(spec.get("url"), f"{path}.url", self.url, self.issues)
        else:
            url = self.url(spec.get("url"), f"{path}.url")
        backend_class = text(spec.get("class")) or DEFAULT_CLASS
        if backend_class not in defaults.classes:
            known = listing(defaults.classes)
            self.issues.error(f"{path}.class", f"unknown class (known: {known})")
            backend_class = DEFAULT_CLASS
        served = PROTOCOL_CAPABILITIES.get(protocol, ("chat",))
        default = DEFAULT_CAPABILITIES.get(protocol, served)
        capabilities = _capabilities(spec.get("capabilities", list(default)))
        if capabilities is not None and not capabilities <= set(served):
            message = f"protocol {protocol} serves only: {', '.join(served)}"
            self.issues.error(f"{path}.capabilities", message)
        class_limits = defaults.classes[backend_class]
        limits = self.limits(spec.get("limits"), path, class_limits, capabilities)
        queue_spec = mapping(spec.get("queue"))
        queue = QueueConfig(
            max=integer(queue_spec.get("max"), 0),
            timeout_s=number(queue_spec.get("timeout_s"), 30.0 if queue_spec else 0),
        )
        health = self.health(spec.get("health"), defaults.health)
        tls = self.tls(spec.get("tls"), f"{path}.tls", defaults.tls)
        patterns = _model_patterns(spec.get("model_capabilities"))
        models = self.models(
            spec.get("models"), f"{path}.models", capabilities or frozenset(), patterns
        )
        if health.readiness is _UNSET and models is not None and protocol == "openai":
            # Listed models need no /models route (many shims lack one): readiness is
            # the liveness probe, else being reachable.
            reachable = url is not None and health.liveness is None
            health = dataclasses.replace(health, readiness=None, reachability=reachable)
        elif health.readiness is _UNSET:
            health = dataclasses.replace(health, readiness=_readiness_path(protocol, url))
        basic_auth = text(spec.get("basic_auth"))
        user, _, password = (basic_auth or "").partition(":")
        images = mapping(spec.get("images"))
        process = processes.process(
            spec.get("process"), f"{path}.process", defaults.groups, self.issues
        )
        lifecycle = text(spec.get("lifecycle"))
        if process is not None:
            # The gateway knows when its own process is up: no probes, and no discovery
            # (a stopped server cannot list its models).
            health = HealthConfig(interval_s=health.interval_s, timeout_s=health.timeout_s)
        processes.check_lifecycle(spec, path, protocol, process, lifecycle, models, self.issues)
        if self.issues.under(path) or capabilities is None:
            return None
        if url is None and protocol != "mock_images":
            return None
        # Fingerprint before loading: a file rotated in between is then seen as a change.
        tls = dataclasses.replace(tls, fingerprint=fingerprint(tls))
        ssl_context = None
        if url is not None and url.scheme == "https":
            try:
                ssl_context = build_ssl_context(tls)
            except TlsSetupError as exc:
                self.issues.error(f"{path}.tls.{exc.field}", str(exc))
                return None
        return BackendConfig(
            name=name,
            url=url,
            backend_class=backend_class,
            protocol=protocol,
            capabilities=capabilities,
            limits=MappingProxyType(limits),
            queue=queue,
            health=health,
            tls=tls,
            timeouts=self.timeouts(spec.get("timeouts"), defaults.timeouts),
            models=models,
            api_key=text(spec.get("api_key")),
            basic_auth=(user, password) if basic_auth else None,
            images=ImagesConfig(
                max_pixels=integer(images.get("max_pixels"), ImagesConfig.max_pixels),
                model=text(images.get("model")),
            ),
            model_patterns=patterns,
            ssl_context=ssl_context,
            process=process,
            lifecycle=lifecycle,
            keep_alive=processes.keep_alive(spec.get("keep_alive")),
        )

    def images_from_env(
        self, env: ImagesSettings, defaults: Defaults, taken: set[str]
    ) -> BackendConfig | None:
        """The backend that ``IMAGES_BACKEND`` and friends are shorthand for."""
        if env.backend == "off":
            return None
        spec: dict[str, Any] = {
            "protocol": _ENV_IMAGE_PROTOCOLS[env.backend],
            "class": env.backend_class,
            "images": {"max_pixels": env.max_pixels, "model": env.openai_model},
        }
        if env.backend != "mock":
            if not env.http_base_url:
                message = f"required when IMAGES_BACKEND={env.backend}"
                self.issues.error("IMAGES_HTTP_BASE_URL", message)
                return None
            spec["url"] = env.http_base_url
        if env.a1111_auth and env.backend == "http_a1111":
            spec["basic_auth"] = env.a1111_auth
        name = "images" if "images" not in taken else "images-env"
        return self.checked_backend(name, spec, defaults)

    def url(self, value: Any, path: str) -> URL | None:
        if value is None:
            self.issues.error(path, "is required")
            return None
        if not isinstance(value, str):
            return None
        if not value.strip():
            self.issues.error(path, "must be a non-empty string")
            return None
        try:
            url = URL(value.rstrip("/"))
        except ValueError:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            self.issues.error(path, "must be an http:// or https:// URL with a host")
            return None
        if url.query_string or url.fragment:
            self.issues.error(path, "must not have a query or fragment")
        return url

    def limits(
        self,
        value: Any,
        backend: str,
        class_limits: Mapping[str, int],
        capabilities: frozenset[str] | None,
    ) -> dict[str, int]:
        spec = mapping(value)
        path = f"{backend}.limits"
        limits = {
            capability: integer(spec.get(capability), class_limits.get(capability, 1))
            for capability in capabilities or ()
        }
        for capability in spec:
            if capability in CAPABILITIES and capability not in (capabilities or ()):
                message = "limit for a capability the backend lacks"
                self.issues.error(f"{path}.{capability}", message)
        return limits

    def health(self, value: Any, base: HealthConfig) -> HealthConfig:
        spec = mapping(value)

        def probe(key: str) -> str | None:
            found = spec.get(key)
            if found is False:
                return None
            return text(found, getattr(base, key))

        return HealthConfig(
            liveness=probe("liveness"),
            readiness=probe("readiness"),
            interval_s=number(spec.get("interval_s"), base.interval_s),
            timeout_s=number(spec.get("timeout_s"), base.timeout_s),
        )

    def tls(self, value: Any, path: str, base: TlsConfig) -> TlsConfig:
        spec = mapping(value)
        client_cert = self.file(spec.get("client_cert"), f"{path}.client_cert", None)
        client_key = self.file(spec.get("client_key"), f"{path}.client_key", None)
        if "client_cert" not in spec and "client_key" not in spec:
            client_cert, client_key = base.client_cert, base.client_key
        elif "client_key" in spec and "client_cert" not in spec:
            self.issues.error(f"{path}.client_key", "client_key needs client_cert")
        return TlsConfig(
            verify=flag(spec.get("verify"), base.verify),
            ca_bundle=self.file(spec.get("ca_bundle"), f"{path}.ca_bundle", base.ca_bundle),
            client_cert=client_cert,
            client_key=client_key,
        )

    def file(self, value: Any, path: str, default: Path | None) -> Path | None:
        if not isinstance(value, str):
            return default
        resolved = Path(value).expanduser()
        if not resolved.is_absolute():
            resolved = self.base_dir / resolved
        if not resolved.is_file():
            self.issues.error(path, f"file not found: {value}")
        return resolved

    def timeouts(self, value: Any, base: Timeouts) -> Timeouts:
        spec = mapping(value)
        return Timeouts(
            **{
                key: number(spec.get(key), getattr(base, key))
                for key in ("connect_s", "read_s", "stream_idle_s")
            }
        )

    def models(
        self,
        value: Any,
        path: str,
        backend_capabilities: frozenset[str],
        patterns: tuple[tuple[str, frozenset[str]], ...] = DEFAULT_MODEL_CAPABILITIES,
    ) -> tuple[ModelConfig, ...] | None:
        if not isinstance(value, list):
            return None
        models: list[ModelConfig] = []
        seen = set()
        for i, item in enumerate(value):
            item_path = f"{path}[{i}]"
            model_id = item if isinstance(item, str) else None
            if isinstance(item, dict):
                model_id = text(item.get("id"))
            capabilities = capabilities_by_name(model_id or "", patterns, backend_capabilities)
            if isinstance(item, dict) and "capabilities" in item:
                capabilities = _capabilities(item["capabilities"]) or backend_capabilities
                for extra in sorted(capabilities - backend_capabilities):
                    self.issues.error(f"{item_path}.capabilities", f"backend lacks {extra!r}")
            if model_id is None:
                continue
            if model_id in seen:
                self.issues.error(item_path, f"model {model_id!r} listed twice")
            seen.add(model_id)
            models.append(ModelConfig(model_id, capabilities))
        return tuple(models)

    def aliases(
        self, value: Any, backends: Mapping[str, BackendConfig], declared: Mapping[str, Any]
    ) -> dict[str, AliasConfig]:
        aliases = {}
        for name, spec in mapping(value).items():
            path = f"aliases.{name}"
            spec = mapping(spec)
            backend, model = text(spec.get("backend")), text(spec.get("model"))
            if backend is not None and backend not in declared:
                self.issues.error(f"{path}.backend", f"no backend named {backend!r}")
            target = backends.get(backend or "")
            listed = {m.id for m in target.models} if target and target.models is not None else None
            if listed is not None and model is not None and model not in listed:
                self.issues.error(f"{path}.model", f"backend {backend!r} does not list {model!r}")
            if backend is None or model is None:
                continue
            aliases[name] = AliasConfig(
                name=name,
                backend=backend,
                model=model,
                max_tokens_cap=integer(spec.get("max_tokens_cap"), None),
                temperature_cap=number(spec.get("temperature_cap"), None),
                tools=flag(spec.get("tools"), True),
            )
        return aliases


def _model_patterns(value: Any) -> tuple[tuple[str, frozenset[str]], ...]:
    """A backend's ``model_capabilities`` (lower-cased globs), then the built-in ones."""
    own = [
        (pattern.lower(), found)
        for pattern, listed in mapping(value).items()
        if (found := _capabilities(listed)) is not None
    ]
    return (*own, *DEFAULT_MODEL_CAPABILITIES)


def _capabilities(value: Any) -> frozenset[str] | None:
    """The known capabilities listed (the schema reports unknown ones), or None."""
    if not isinstance(value, list) or not value:
        return None
    return frozenset(item for item in value if item in CAPABILITIES)


def _readiness_path(protocol: str, url: URL | None) -> str | None:
    """Where a backend says it can serve, by protocol."""
    if url is None:
        return None
    if protocol == "a1111":
        return "/sdapi/v1/sd-models"
    if protocol in ("openai_images", "heartmula"):
        return "/readyz"
    return f"{url.path.rstrip('/')}/models"
