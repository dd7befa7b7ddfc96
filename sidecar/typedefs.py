"""Typed keys for everything the app and its requests share.

Every layer imports these keys, so this module sits at the base: it imports the types it
names only for the type checker (``TYPE_CHECKING``), never at run time, and each key
carries its type in its annotation (``web.AppKey[T]``) instead of as an argument.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .agents.service import AgentRunner
    from .auth import TokenSet
    from .auth.keystore import KeyService
    from .auth.limits import Ticket
    from .auth.signing import UrlSigner
    from .config.schema import GatewayConfig
    from .images.store import ImageStore
    from .observability.access_log import AccessRecord
    from .observability.metrics import GatewayMetrics
    from .reload import ConfigReloader
    from .responses.store import ResponseStore
    from .routing.health import HealthChecker
    from .routing.lifecycle import LifecycleManager
    from .routing.registry import RegistryHolder
    from .settings import BearerToken, Settings
    from .storage import StorageMonitor
    from .toolbus.bus import ToolBus
    from .ui.state import UiState
    from .usage.ledger import UsageLedger
    from .users.db import User
    from .users.store import Session

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
REGISTRY: web.AppKey[RegistryHolder] = web.AppKey("registry")
RELOADER: web.AppKey[ConfigReloader] = web.AppKey("reloader")
HEALTH: web.AppKey[HealthChecker] = web.AppKey("health")
TOKENS: web.AppKey[TokenSet] = web.AppKey("tokens")
IMAGE_STORE: web.AppKey[ImageStore] = web.AppKey("image_store")
URL_SIGNER: web.AppKey[UrlSigner] = web.AppKey("url_signer")
TOOLBUS: web.AppKey[ToolBus] = web.AppKey("toolbus")
AGENTS: web.AppKey[AgentRunner] = web.AppKey("agents")
METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics")
UI_STATE: web.AppKey[UiState] = web.AppKey("ui_state")
STORAGE: web.AppKey[StorageMonitor] = web.AppKey("storage")
USAGE: web.AppKey[UsageLedger] = web.AppKey("usage")
MODELS: web.AppKey[LifecycleManager] = web.AppKey("models")
RESPONSES: web.AppKey[ResponseStore] = web.AppKey("responses")
# A config ``gateway serve`` loaded and checked already, so start-up does not read it again.
PRELOADED_CONFIG: web.AppKey[GatewayConfig] = web.AppKey("preloaded_config")
KEYS: web.AppKey[KeyService] = web.AppKey("keys")

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
CLIENT_IP: web.RequestKey[str] = web.RequestKey("client_ip")
TOKEN: web.RequestKey[BearerToken] = web.RequestKey("token")
ACCESS: web.RequestKey[AccessRecord] = web.RequestKey("access")
UI_USER: web.RequestKey[User] = web.RequestKey("ui_user")
UI_SESSION: web.RequestKey[Session | None] = web.RequestKey("ui_session")
UI_CSRF: web.RequestKey[str] = web.RequestKey("ui_csrf")
# An API key's limits for this request: the x-ratelimit-* headers its response carries.
RATE_LIMIT: web.RequestKey[Ticket] = web.RequestKey("rate_limit")
