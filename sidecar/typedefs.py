"""Typed keys for everything the app and its requests share."""

from __future__ import annotations

from aiohttp import web

from .agents.service import AgentRunner
from .auth import TokenSet
from .config.reload import ConfigReloader
from .images.signing import UrlSigner
from .images.store import ImageStore
from .observability.access_log import AccessRecord
from .observability.metrics import GatewayMetrics
from .routing.health import HealthChecker
from .routing.registry import RegistryHolder
from .settings import BearerToken, Settings
from .storage import StorageMonitor
from .toolbus.bus import ToolBus
from .ui.state import UiState
from .users.db import User
from .users.store import Session

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", RegistryHolder)
RELOADER = web.AppKey("reloader", ConfigReloader)
HEALTH = web.AppKey("health", HealthChecker)
TOKENS = web.AppKey("tokens", TokenSet)
IMAGE_STORE = web.AppKey("image_store", ImageStore)
URL_SIGNER = web.AppKey("url_signer", UrlSigner)
TOOLBUS = web.AppKey("toolbus", ToolBus)
AGENTS = web.AppKey("agents", AgentRunner)
METRICS = web.AppKey("metrics", GatewayMetrics)
UI_STATE = web.AppKey("ui_state", UiState)
STORAGE = web.AppKey("storage", StorageMonitor)

REQUEST_ID = web.RequestKey("request_id", str)
CLIENT_IP = web.RequestKey("client_ip", str)
TOKEN = web.RequestKey("token", BearerToken)
ACCESS = web.RequestKey("access", AccessRecord)
UI_USER = web.RequestKey("ui_user", User)
UI_SESSION = web.RequestKey("ui_session", Session | None)
UI_CSRF = web.RequestKey("ui_csrf", str)
