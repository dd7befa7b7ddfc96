"""The UI's JSON API: accounts, settings, conversations, and the playgrounds.

Everything a user reads or changes is looked up with their id, so another user's
conversation is simply not found (404). Images and music go through the same services,
router and admission as /v1.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from aiohttp import web

from ..errors import (
    Conflict,
    DuplicateUser,
    GatewayError,
    InvalidRequest,
    LastAdmin,
    LoginRejected,
    LoginThrottled,
    NotFound,
    PasswordRejected,
    RateLimited,
    ReservedUser,
    Unauthorized,
)
from ..images.api import generate_for
from ..music.service import generate_music, parse_music_request
from ..typedefs import (
    ACCESS,
    CLIENT_IP,
    REGISTRY,
    REQUEST_ID,
    SETTINGS,
    UI_SESSION,
    UI_STATE,
    UI_USER,
)
from ..users.db import LOCAL_USER
from ..wire.body import read_json_object
from ..wire.model_name import check_model_name
from . import history
from .guard import SESSION_COOKIE
from .pages import require_admin

log = logging.getLogger("gateway.ui")
_USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MAX_TITLE = 200
MAX_PROMPT = 8000
MAX_CONVERSATIONS = 1000  # per user; past it a new one is refused (409), nothing is dropped


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


# -- auth ---------------------------------------------------------------------------------


async def login(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise InvalidRequest("send 'username' and 'password'")
    if not request.app[SETTINGS].ui.accounts:
        raise InvalidRequest("User accounts are off (USER_AUTH_ENABLED)", code="accounts_off")
    users = request.app[UI_STATE].users
    try:
        result = await users.login(username, password, request[CLIENT_IP])
    except LoginRejected as exc:
        raise InvalidRequest(str(exc), param=exc.param) from None
    except LoginThrottled as exc:
        raise _login_refused(exc, username, request[CLIENT_IP]) from None
    if result is None:
        raise Unauthorized("Invalid username or password", code="invalid_login")
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        await users.logout(old)
    session_id, session = result
    response = _json(
        {"user": {"username": session.user.username, "is_admin": session.user.is_admin}}
    )
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        path="/",
        secure=True,
        httponly=True,
        samesite="Strict",
        max_age=math.ceil(request.app[SETTINGS].ui.session_max_s),
    )
    return response


def _login_refused(exc: LoginThrottled, username: str, address: str) -> GatewayError:
    """A 429 with ``Retry-After``; the log names the limit, never the password."""
    if exc.reason == "busy":
        log.warning("login refused: too many password checks at once")
        return RateLimited(
            "Too many logins at once; try again in a moment",
            code="login_busy",
            retry_after=exc.retry_after,
        )
    if exc.reason == "address":
        log.warning("login refused for %s: too many failed logins from this address", address)
    else:
        log.warning("login for %r refused: locked after repeated failures", username[:64])
    return RateLimited(
        "Too many failed logins; wait and try again",
        code="login_throttled",
        retry_after=exc.retry_after,
    )


async def logout(request: web.Request) -> web.Response:
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        await request.app[UI_STATE].users.logout(session_id)
    response = web.Response(status=204)
    response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return response


async def me(request: web.Request) -> web.Response:
    accounts = request.app[SETTINGS].ui.accounts
    session = request.get(UI_SESSION)
    if accounts and session is None:
        raise Unauthorized("Not logged in", code="login_required")
    user = (
        None
        if session is None
        else {"username": session.user.username, "is_admin": session.user.is_admin}
    )
    return _json({"user": user, "accounts_enabled": accounts})


# -- settings -----------------------------------------------------------------------------


async def get_settings(request: web.Request) -> web.Response:
    user = request[UI_USER]
    return _json(await request.app[UI_STATE].users.run(lambda db: db.settings(user.id)))


async def put_settings(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    model = body.get("default_model")
    if model is not None and model != "":
        check_model_name(model)
    prompt = body.get("system_prompt") or ""
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT:
        raise InvalidRequest(
            f"'system_prompt' must be text of at most {MAX_PROMPT} characters",
            param="system_prompt",
        )
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 2
    ):
        raise InvalidRequest("'temperature' must be a number from 0 to 2", param="temperature")
    values = {"default_model": model or None, "system_prompt": prompt, "temperature": temperature}
    user = request[UI_USER]
    return _json(
        await request.app[UI_STATE].users.run(lambda db: db.save_settings(user.id, values))
    )


# -- conversations ------------------------------------------------------------------------


def requested_conversation_id(request: web.Request) -> int:
    """The conversation id in the path; a 404 (never a 500) when it is not one."""
    text = request.match_info["conversation_id"]
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise NotFound("No such conversation", code="conversation_not_found")
    return int(text)


def _fields(body: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if "title" in body:
        title = body["title"]
        if not isinstance(title, str) or len(title) > MAX_TITLE:
            raise InvalidRequest(
                f"'title' must be text of at most {MAX_TITLE} characters", param="title"
            )
        fields["title"] = title.strip()
    if "model" in body:
        model = body["model"]
        fields["model"] = None if model in (None, "") else check_model_name(model)
    return fields


async def list_conversations(request: web.Request) -> web.Response:
    user = request[UI_USER]
    data = await request.app[UI_STATE].users.run(lambda db: db.conversations(user.id))
    return _json({"data": data})


async def create_conversation(request: web.Request) -> web.Response:
    fields = _fields(await read_json_object(request))
    user = request[UI_USER]

    def create(db: Any) -> dict[str, Any] | None:
        # counted and created in one call on the database's one thread: no race past it
        if db.conversation_count(user.id) >= MAX_CONVERSATIONS:
            return None
        found: dict[str, Any] = db.create_conversation(
            user.id, fields.get("title", ""), fields.get("model")
        )
        return found

    created = await request.app[UI_STATE].users.run(create)
    if created is None:
        raise Conflict(
            f"You have {MAX_CONVERSATIONS} conversations, the most kept;"
            " delete some to start new ones",
            code="too_many_conversations",
        )
    return _json(created, status=201)


async def get_conversation(request: web.Request) -> web.Response:
    conversation_id, user = requested_conversation_id(request), request[UI_USER]

    def load(db: Any) -> dict[str, Any] | None:
        found = db.conversation(user.id, conversation_id)
        return None if found is None else {**found, "messages": db.messages(conversation_id)}

    found = await request.app[UI_STATE].users.run(load)
    if found is None:
        raise NotFound("No such conversation", code="conversation_not_found")
    return _json(found)


async def update_conversation(request: web.Request) -> web.Response:
    conversation_id, user = requested_conversation_id(request), request[UI_USER]
    fields = _fields(await read_json_object(request))
    updated = await request.app[UI_STATE].users.run(
        lambda db: db.update_conversation(user.id, conversation_id, fields)
    )
    if updated is None:
        raise NotFound("No such conversation", code="conversation_not_found")
    return _json(updated)


async def delete_conversation(request: web.Request) -> web.Response:
    conversation_id, user = requested_conversation_id(request), request[UI_USER]
    deleted = await request.app[UI_STATE].users.run(
        lambda db: db.delete_conversation(user.id, conversation_id)
    )
    if not deleted:
        raise NotFound("No such conversation", code="conversation_not_found")
    return web.Response(status=204)


# -- playgrounds --------------------------------------------------------------------------


async def images(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    payload = {key: body[key] for key in ("prompt", "size", "n", "model") if key in body}
    answer, headers = await generate_for(request, {**payload, "response_format": "url"})
    names = [history.image_name(item["url"]) for item in answer["data"]]
    details = {"size": payload.get("size")}
    answer["history"] = await history.record(
        request, "image", str(payload["prompt"]), [(n, details) for n in names if n]
    )
    return web.json_response(answer, headers=headers)


async def music(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    music_request = parse_music_request(body)
    result = await generate_music(request.app[REGISTRY].current, music_request, request[REQUEST_ID])
    request[ACCESS].backend, request[ACCESS].model = result["backend"], music_request.model
    name = str(result["audio_url"]).rsplit("/", 1)[-1]
    prompt = str(music_request.fields.get("prompt") or music_request.fields.get("tags") or "")
    details = {"duration": result.get("duration"), "tags": music_request.fields.get("tags")}
    result["history"] = await history.record(request, "music", prompt, [(name, details)])
    return _json(result)


# -- admin --------------------------------------------------------------------------------


async def list_users(request: web.Request) -> web.Response:
    require_admin(request)
    users = await request.app[UI_STATE].users.run(lambda db: db.users())
    return _json({"data": [user.public() for user in users]})


async def create_user(request: web.Request) -> web.Response:
    require_admin(request)
    body = await read_json_object(request)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not _USERNAME.match(username):
        raise InvalidRequest(
            "usernames are 1-64 letters, digits, '_', '.', '@' or '-'", param="username"
        )
    if username.lower() == LOCAL_USER:
        raise InvalidRequest(f"'{LOCAL_USER}' is reserved for the shared history", param="username")
    if not isinstance(password, str):
        raise InvalidRequest("'password' is required", param="password")
    is_admin = body.get("is_admin", False)
    if not isinstance(is_admin, bool):  # "false" must not make an admin
        raise InvalidRequest("'is_admin' must be true or false", param="is_admin")
    try:
        user = await request.app[UI_STATE].users.create_user(username, password, is_admin)
    except PasswordRejected as exc:
        raise InvalidRequest(str(exc), param="password") from None
    except DuplicateUser as exc:
        raise Conflict(str(exc)) from None
    return _json(user.public(), status=201)


async def update_user(request: web.Request) -> web.Response:
    require_admin(request)
    body = await read_json_object(request)
    changes: dict[str, Any] = {}
    for flag in ("disabled", "is_admin"):
        if flag in body:
            if not isinstance(body[flag], bool):
                raise InvalidRequest(f"'{flag}' must be true or false", param=flag)
            changes[flag] = body[flag]
    if "password" in body:
        if not isinstance(body["password"], str):
            raise InvalidRequest("'password' must be text", param="password")
        changes["password"] = body["password"]
    try:
        user = await request.app[UI_STATE].users.update_user(
            request.match_info["username"], **changes
        )
    except PasswordRejected as exc:
        raise InvalidRequest(str(exc), param="password") from None
    except ReservedUser as exc:
        raise InvalidRequest(str(exc), param="username", code="reserved_user") from None
    except LastAdmin as exc:
        raise Conflict(str(exc), code="last_admin") from None
    if user is None:
        raise NotFound("No such user", code="user_not_found")
    return _json(user.public())


async def delete_user(request: web.Request) -> web.Response:
    """Remove an account with its conversations; never the last enabled admin (409)."""
    require_admin(request)
    try:
        deleted = await request.app[UI_STATE].users.delete_user(request.match_info["username"])
    except ReservedUser as exc:
        raise InvalidRequest(str(exc), param="username", code="reserved_user") from None
    except LastAdmin as exc:
        raise Conflict(str(exc), code="last_admin") from None
    if not deleted:
        raise NotFound("No such user", code="user_not_found")
    return web.Response(status=204)
