"""The UI's pages: server-rendered, with every value escaped by Jinja's autoescape."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from .. import __version__
from ..errors import Forbidden
from ..routing.registry import Backend
from ..typedefs import REGISTRY, SETTINGS, UI_CSRF, UI_SESSION, UI_STATE, UI_USER

IMAGE_SIZES = ("256x256", "512x512", "768x768", "1024x1024")


def base_context(request: web.Request, page: str) -> dict[str, Any]:
    session = request.get(UI_SESSION)
    return {
        "csrf_token": request[UI_CSRF],
        "user": None if session is None else _public(session.user),
        "accounts_enabled": request.app[SETTINGS].ui.accounts,
        "version": __version__,
        "page": page,
    }


def _public(user: Any) -> dict[str, Any]:
    return {"username": user.username, "is_admin": user.is_admin}


def model_choices(request: web.Request) -> list[dict[str, Any]]:
    """The models the chat picker offers: chat-capable only (an alias when its target is),
    each with whether its backend is up now (a down one is shown greyed out)."""
    registry = request.app[REGISTRY].current
    choices: dict[str, Backend] = {}
    for name, alias in registry.config.aliases.items():
        backend = registry.backends.get(alias.backend)
        if backend is not None and backend.supports(alias.model, "chat"):
            choices[name] = backend
    for backend in registry.backends.values():
        for model_id in backend.model_ids:
            if backend.supports(model_id, "chat") and model_id not in choices:
                choices[model_id] = backend
    return [{"id": name, "available": backend.health.routable} for name, backend in choices.items()]


def chat_models(request: web.Request) -> list[str]:
    return [choice["id"] for choice in model_choices(request)]


async def chat(request: web.Request) -> web.Response:
    user = request[UI_USER]
    settings = await request.app[UI_STATE].users.run(lambda db: db.settings(user.id))
    context = {
        **base_context(request, "ui_chat"),
        "models": model_choices(request),
        "settings": settings,
    }
    return aiohttp_jinja2.render_template("chat.html", request, context)


async def login(request: web.Request) -> web.StreamResponse:
    if not request.app[SETTINGS].ui.accounts or request.get(UI_SESSION) is not None:
        raise web.HTTPSeeOther(str(request.app.router["ui_chat"].url_for()))
    next_path = request.query.get("next", "")
    if not next_path.startswith("/ui") or next_path.startswith("//"):
        next_path = "/ui"
    context = {**base_context(request, "ui_login"), "next": next_path}
    return aiohttp_jinja2.render_template("login.html", request, context)


async def images(request: web.Request) -> web.Response:
    context = {**base_context(request, "ui_images"), "sizes": list(IMAGE_SIZES)}
    return aiohttp_jinja2.render_template("images.html", request, context)


async def music(request: web.Request) -> web.Response:
    return aiohttp_jinja2.render_template("music.html", request, base_context(request, "ui_music"))


async def status(request: web.Request) -> web.Response:
    return aiohttp_jinja2.render_template(
        "status.html", request, base_context(request, "ui_status")
    )


async def admin(request: web.Request) -> web.Response:
    require_admin(request)
    return aiohttp_jinja2.render_template(
        "admin_users.html", request, base_context(request, "ui_admin")
    )


def require_admin(request: web.Request) -> None:
    if not request.app[SETTINGS].ui.accounts:
        raise Forbidden("User accounts are off (USER_AUTH_ENABLED)", code="accounts_off")
    if not request[UI_USER].is_admin:
        raise Forbidden("Only admins manage users", code="admin_only")
