"""Typed settings from the environment, built once at start and handed to the app factory.

Nothing else in the sidecar reads ``os.environ``: the YAML loader gets the snapshot held
here for ``${VAR}`` substitution.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from .errors import SettingsError

MIN_TOKEN_LENGTH = 16
_PLACEHOLDER_TOKENS = {
    "changeme",
    "change-me",
    "change_me",
    "replaceme",
    "replace-me",
    "your-token",
    "your_token",
    "yourtoken",
    "secret",
    "token",
    "password",
    "example",
    "test",
    "todo",
}
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class BearerToken:
    """One accepted API token. ``name`` is what logs and records show; never the value.

    ``admin`` tokens (named in ``GATEWAY_ADMIN_TOKENS``) may read and replay every tool
    record and agent run; any other token sees only the records it made.
    """

    name: str
    value: str = field(repr=False)
    admin: bool = False


@dataclass(frozen=True)
class BackendTlsDefaults:
    """What a backend's ``tls`` block falls back to (``BACKEND_*`` variables)."""

    verify: bool = True
    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

IMAGES_BACKENDS = ("mock", "http_a1111", "http_openai_images", "off")


@dataclass(frozen=True)
class ImagesSettings:
    """The images feature: the env shorthand for an images backend, storage and URLs.

    ``backend`` is used only when no backend in ``gateway.yaml`` has the ``images``
    capability; it is shorthand for such a backend (``off`` disables the shorthand).
    """

    backend: str = "mock"
    backend_class: str = "gpu_heavy"
    http_base_url: str | None = None
    openai_model: str | None = None
    a1111_auth: str | None = field(default=None, repr=False)  # "user:password"
    max_pixels: int = 2_097_152
    directory: Path | None = None  # default: $GATEWAY_DATA_DIR/images
    url_ttl_s: int = 3600
    retention_hours: float = 168.0  # 0 keeps images forever
    url_secret: str | None = field(default=None, repr=False)


TOOL_LOG_MODES = ("ndjson", "per_invocation", "both")


@dataclass(frozen=True)
class ToolsSettings:
    """The tool bus and agents: allowlist, where calls and runs are recorded."""

    allowlist: frozenset[str] | None = None  # TOOLS_ALLOWLIST; None allows every tool
    registry_path: Path | None = None  # TOOLS_REGISTRY_PATH replaces gateway.yaml's tools
    log_mode: str = "both"
    log_path: Path | None = None  # default: $GATEWAY_DATA_DIR/tools/invocations.ndjson
    log_dir: Path | None = None  # default: $GATEWAY_DATA_DIR/tools/invocations
    agent_specs_path: Path | None = None  # AGENT_SPECS_PATH
    heartmula_base_url: str | None = None  # shorthand for a music backend


@dataclass(frozen=True)
class ResponsesSettings:
    """Stored Responses (``/v1/responses`` with ``store``): how long and how much."""

    retention_days: float = 30.0  # GATEWAY_RESPONSES_RETENTION_DAYS; 0 stores nothing
    max_record_bytes: int = 4 * 1024 * 1024  # GATEWAY_RESPONSES_MAX_RECORD_BYTES
    max_total_bytes: int = 1024 * 1024 * 1024  # GATEWAY_RESPONSES_MAX_BYTES; oldest go first


# bcrypt's own threads: 2, but always leave one core to the event loop and its pool.
DEFAULT_HASH_THREADS = max(1, min(2, (os.cpu_count() or 1) - 1))


@dataclass(frozen=True)
class LoginSettings:
    """What one login may cost: password checks at once, per address, rows kept."""

    max_checks: int = 8  # USER_LOGIN_MAX_CHECKS: logins being checked at once; over: 429
    hash_threads: int = DEFAULT_HASH_THREADS  # USER_LOGIN_HASH_THREADS: bcrypt's own pool
    ip_failures: int = 20  # USER_LOGIN_IP_FAILURES: per client address per window; over: 429
    ip_window_s: int = 300  # USER_LOGIN_IP_WINDOW_S
    failure_rows: int = 10_000  # USER_LOGIN_FAILURE_ROWS: per-account throttle rows kept


@dataclass(frozen=True)
class UiSettings:
    """The browser UI: accounts, sessions, where its templates live."""

    accounts: bool = False  # USER_AUTH_ENABLED; off: open to UI_IP_ALLOWLIST, no login
    db_path: Path | None = None  # USER_DB_PATH; default $GATEWAY_DATA_DIR/users.sqlite3
    session_idle_s: float = 8 * 3600
    session_max_s: float = 7 * 24 * 3600
    templates_dir: Path | None = None  # default: the repository's templates/
    login: LoginSettings = LoginSettings()


@dataclass(frozen=True)
class UsageSettings:
    """The usage ledger: one row per request in SQLite, written in batches by a thread."""

    enabled: bool = True  # GATEWAY_USAGE_ENABLED
    retention_days: int = 90  # GATEWAY_USAGE_RETENTION_DAYS: per-request rows kept
    rollup_days: int = 730  # GATEWAY_USAGE_ROLLUP_DAYS: daily totals kept
    flush_s: float = 1.0  # GATEWAY_USAGE_FLUSH_S: the writer thread's period
    queue_max: int = 10_000  # GATEWAY_USAGE_QUEUE_MAX: rows waiting; more are dropped, counted


@dataclass(frozen=True)
class Settings:
    bearer_tokens: tuple[BearerToken, ...]
    config_path: Path = Path("gateway.yaml")
    data_dir: Path = Path("var")
    socket_path: Path | None = None
    host: str | None = None
    port: int | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    ui_ip_allowlist: tuple[IPNetwork, ...] = ()  # empty: the UI is closed
    metrics_allowlist: tuple[IPNetwork, ...] = ()  # may scrape /metrics without a token
    backend_tls: BackendTlsDefaults = BackendTlsDefaults()
    max_body_bytes: int = 8 * 1024 * 1024
    config_poll_s: float = 2.0
    log_level: str = "INFO"
    access_log: bool = True
    public_base_url: str | None = None
    images: ImagesSettings = ImagesSettings()
    tools: ToolsSettings = ToolsSettings()
    ui: UiSettings = UiSettings()
    usage: UsageSettings = UsageSettings()
    responses: ResponsesSettings = ResponsesSettings()
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def tool_log_path(self) -> Path:
        return self.tools.log_path or self.data_dir / "tools" / "invocations.ndjson"

    @property
    def tool_log_dir(self) -> Path:
        return self.tools.log_dir or self.data_dir / "tools" / "invocations"

    @property
    def user_db_path(self) -> Path:
        return self.ui.db_path or self.data_dir / "users.sqlite3"

    @property
    def usage_db_path(self) -> Path:
        return self.data_dir / "usage.sqlite3"

    @property
    def responses_db_path(self) -> Path:
        return self.data_dir / "responses.sqlite3"

    @property
    def keys_db_path(self) -> Path:
        return self.data_dir / "keys.sqlite3"

    @property
    def templates_dir(self) -> Path:
        return self.ui.templates_dir or Path(__file__).resolve().parents[1] / "templates"

    @property
    def agent_runs_dir(self) -> Path:
        return self.data_dir / "agent_runs"

    @property
    def image_dir(self) -> Path:
        return self.images.directory or self.data_dir / "images"

    @property
    def sidecar_socket(self) -> Path:
        return self.socket_path or self.data_dir / "run" / "sidecar.sock"

    @property
    def uses_tcp(self) -> bool:
        return self.host is not None or self.port is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        data_dir = Path(env.get("GATEWAY_DATA_DIR") or "var")
        socket = env.get("GATEWAY_SOCKET")
        host = env.get("GATEWAY_HOST") or None
        port_text = env.get("GATEWAY_PORT") or None
        return cls(
            bearer_tokens=parse_bearer_tokens(
                env.get("GATEWAY_BEARER_TOKEN"),
                env.get("GATEWAY_BEARER_TOKENS"),
                env.get("GATEWAY_ADMIN_TOKENS"),
            ),
            config_path=Path(env.get("GATEWAY_CONFIG") or "gateway.yaml"),
            data_dir=data_dir,
            socket_path=Path(socket) if socket else None,
            host=host if host or port_text is None else "127.0.0.1",
            port=_int(env, "GATEWAY_PORT", None, minimum=0, maximum=65535)
            if port_text
            else (8080 if host else None),
            trusted_proxies=parse_networks(env.get("TRUSTED_PROXIES", ""), "TRUSTED_PROXIES"),
            ui_ip_allowlist=parse_networks(env.get("UI_IP_ALLOWLIST", ""), "UI_IP_ALLOWLIST"),
            metrics_allowlist=parse_networks(env.get("METRICS_ALLOWLIST", ""), "METRICS_ALLOWLIST"),
            backend_tls=_backend_tls(env),
            max_body_bytes=_int(env, "GATEWAY_MAX_BODY_BYTES", 8 * 1024 * 1024, minimum=1024),
            config_poll_s=_float(env, "GATEWAY_CONFIG_POLL_S", 2.0, minimum=0.0),
            log_level=(env.get("GATEWAY_LOG_LEVEL") or "INFO").upper(),
            access_log=_bool(env, "GATEWAY_ACCESS_LOG", True),
            public_base_url=_base_url(env.get("PUBLIC_BASE_URL")),
            images=_images(env),
            tools=_tools(env),
            ui=UiSettings(
                accounts=_bool(env, "USER_AUTH_ENABLED", False),
                db_path=Path(env["USER_DB_PATH"]) if env.get("USER_DB_PATH") else None,
                session_idle_s=_float(env, "UI_SESSION_IDLE_S", 8 * 3600, minimum=60),
                session_max_s=_float(env, "UI_SESSION_MAX_S", 7 * 24 * 3600, minimum=60),
                templates_dir=Path(env["GATEWAY_TEMPLATES_DIR"])
                if env.get("GATEWAY_TEMPLATES_DIR")
                else None,
                login=_login(env),
            ),
            usage=_usage(env),
            responses=_responses(env),
            environ=MappingProxyType(env),
        )


def parse_bearer_tokens(
    single: str | None, many: str | None, admins: str | None = None
) -> tuple[BearerToken, ...]:
    """``GATEWAY_BEARER_TOKEN`` (named ``default``) plus ``GATEWAY_BEARER_TOKENS``.

    Entries of the list are ``token`` or ``name:token``. Refuses to start without one, or
    with an empty, placeholder or short token, because a guessable token on a LAN gateway
    is an open door. ``admins`` (``GATEWAY_ADMIN_TOKENS``) names the tokens that may read
    every record; a name that is not a configured token is refused.
    """
    tokens: list[BearerToken] = []
    if single is not None and single.strip():
        tokens.append(
            BearerToken("default", _checked_token(single.strip(), "GATEWAY_BEARER_TOKEN"))
        )
    elif single is not None and many is None:
        raise SettingsError("GATEWAY_BEARER_TOKEN is set but empty; set a random token")
    for index, entry in enumerate((many or "").split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, value = (part.strip() for part in entry.partition(":"))
        if not sep or not _TOKEN_NAME.match(name):
            name, value = f"token-{index}", entry
        tokens.append(
            BearerToken(name, _checked_token(value, f"GATEWAY_BEARER_TOKENS entry {index}"))
        )
    if not tokens:
        raise SettingsError(
            "no bearer token: set GATEWAY_BEARER_TOKEN (or GATEWAY_BEARER_TOKENS) to a random "
            f"string of at least {MIN_TOKEN_LENGTH} characters, e.g. from "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    names = [token.name for token in tokens]
    if len(set(names)) != len(names):
        raise SettingsError("GATEWAY_BEARER_TOKENS: token names must be unique")
    admin_names = {name for name in re.split(r"[,\s]+", admins or "") if name}
    unknown = sorted(admin_names - set(names))
    if unknown:
        raise SettingsError(
            f"GATEWAY_ADMIN_TOKENS names no configured token: {', '.join(unknown)} "
            f"(token names: {', '.join(names)})"
        )
    return tuple(
        BearerToken(t.name, t.value, admin=True) if t.name in admin_names else t for t in tokens
    )


def _checked_token(value: str, source: str) -> str:
    lowered = value.lower().strip("<>{}[]$ ")
    if lowered in _PLACEHOLDER_TOKENS or lowered.startswith(("changeme", "change-me", "your")):
        raise SettingsError(f"{source} is a placeholder; set a random token")
    if len(value) < MIN_TOKEN_LENGTH:
        raise SettingsError(
            f"{source} is too short ({len(value)} characters); use at least {MIN_TOKEN_LENGTH}"
        )
    if len(set(value)) < 4:
        raise SettingsError(f"{source} is not random enough; set a random token")
    return value


def parse_networks(text: str, source: str) -> tuple[IPNetwork, ...]:
    """A comma/space separated list of IPs and CIDRs."""
    networks = []
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise SettingsError(f"{source}: {item!r} is not an IP address or CIDR") from exc
    return tuple(networks)


def _images(env: Mapping[str, str]) -> ImagesSettings:
    backend = (env.get("IMAGES_BACKEND") or "mock").strip().lower()
    if backend not in IMAGES_BACKENDS:
        raise SettingsError(f"IMAGES_BACKEND must be one of {', '.join(IMAGES_BACKENDS)}")
    auth = (env.get("IMAGES_A1111_AUTH") or "").strip() or None
    if auth is not None and ":" not in auth:
        raise SettingsError("IMAGES_A1111_AUTH must be user:password")
    directory = (env.get("UI_IMAGE_DIR") or "").strip()
    return ImagesSettings(
        backend=backend,
        backend_class=(env.get("IMAGES_BACKEND_CLASS") or "gpu_heavy").strip(),
        http_base_url=(env.get("IMAGES_HTTP_BASE_URL") or "").strip() or None,
        openai_model=(env.get("IMAGES_OPENAI_MODEL") or "").strip() or None,
        a1111_auth=auth,
        max_pixels=_int(env, "IMAGES_MAX_PIXELS", 2_097_152, minimum=64 * 64),
        directory=Path(directory) if directory else None,
        url_ttl_s=_int(env, "IMAGES_URL_TTL_S", 3600, minimum=1),
        retention_hours=_float(env, "IMAGES_RETENTION_HOURS", 168.0, minimum=0.0),
        url_secret=(env.get("IMAGES_URL_SECRET") or "").strip() or None,
    )


def _login(env: Mapping[str, str]) -> LoginSettings:
    threads = _int(env, "USER_LOGIN_HASH_THREADS", DEFAULT_HASH_THREADS, minimum=1, maximum=16)
    return LoginSettings(
        max_checks=_int(env, "USER_LOGIN_MAX_CHECKS", max(8, threads), minimum=threads),
        hash_threads=threads,
        ip_failures=_int(env, "USER_LOGIN_IP_FAILURES", 20, minimum=1),
        ip_window_s=_int(env, "USER_LOGIN_IP_WINDOW_S", 300, minimum=1, maximum=86_400),
        failure_rows=_int(env, "USER_LOGIN_FAILURE_ROWS", 10_000, minimum=100),
    )


def _usage(env: Mapping[str, str]) -> UsageSettings:
    return UsageSettings(
        enabled=_bool(env, "GATEWAY_USAGE_ENABLED", True),
        retention_days=_int(env, "GATEWAY_USAGE_RETENTION_DAYS", 90, minimum=1, maximum=36_500),
        rollup_days=_int(env, "GATEWAY_USAGE_ROLLUP_DAYS", 730, minimum=1, maximum=36_500),
        flush_s=_float(env, "GATEWAY_USAGE_FLUSH_S", 1.0, minimum=0.01),
        queue_max=_int(env, "GATEWAY_USAGE_QUEUE_MAX", 10_000, minimum=100, maximum=1_000_000),
    )


def _responses(env: Mapping[str, str]) -> ResponsesSettings:
    return ResponsesSettings(
        retention_days=_float(env, "GATEWAY_RESPONSES_RETENTION_DAYS", 30.0, minimum=0.0),
        max_record_bytes=_int(
            env, "GATEWAY_RESPONSES_MAX_RECORD_BYTES", 4 * 1024 * 1024, minimum=64 * 1024
        ),
        max_total_bytes=_int(
            env, "GATEWAY_RESPONSES_MAX_BYTES", 1024 * 1024 * 1024, minimum=1024 * 1024
        ),
    )


def _tools(env: Mapping[str, str]) -> ToolsSettings:
    allow = [name for name in re.split(r"[,\s]+", env.get("TOOLS_ALLOWLIST") or "") if name]
    mode = (env.get("TOOLS_LOG_MODE") or "both").strip().lower()
    if mode not in TOOL_LOG_MODES:
        raise SettingsError(f"TOOLS_LOG_MODE must be one of {', '.join(TOOL_LOG_MODES)}")

    def path(name: str) -> Path | None:
        value = (env.get(name) or "").strip()
        return Path(value) if value else None

    return ToolsSettings(
        allowlist=frozenset(allow) if allow else None,
        registry_path=path("TOOLS_REGISTRY_PATH"),
        log_mode=mode,
        log_path=path("TOOLS_LOG_PATH"),
        log_dir=path("TOOLS_LOG_DIR"),
        agent_specs_path=path("AGENT_SPECS_PATH"),
        heartmula_base_url=_base_url(env.get("HEARTMULA_BASE_URL"), "HEARTMULA_BASE_URL"),
    )


def _base_url(value: str | None, name: str = "PUBLIC_BASE_URL") -> str | None:
    text = (value or "").strip().rstrip("/")
    if not text:
        return None
    if not re.match(r"^https?://[^/\s?#]+$", text):
        raise SettingsError(f"{name} must be an http(s) URL with no path, not {value!r}")
    return text


def _backend_tls(env: Mapping[str, str]) -> BackendTlsDefaults:
    cert_text = (env.get("BACKEND_CLIENT_CERT") or "").strip()
    client_cert = client_key = None
    if cert_text:
        cert, _, key = cert_text.partition(",")
        client_cert = Path(cert.strip())
        client_key = Path(key.strip()) if key.strip() else None
    ca = (env.get("BACKEND_CA_BUNDLE") or "").strip()
    return BackendTlsDefaults(
        verify=_bool(env, "BACKEND_VERIFY_TLS", True),
        ca_bundle=Path(ca) if ca else None,
        client_cert=client_cert,
        client_key=client_key,
    )


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name} must be true or false, not {raw!r}")


def _int(
    env: Mapping[str, str],
    name: str,
    default: int | None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip():
        assert default is not None
        return default
    try:
        value = int(raw.strip())
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, not {raw!r}") from exc
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be at most {maximum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw.strip())
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number, not {raw!r}") from exc
    if not math.isfinite(value):
        raise SettingsError(f"{name} must be a finite number, not {raw!r}")
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}")
    return value
