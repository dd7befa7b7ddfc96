"""Sending a chat message from the UI: store it, stream the reply, store the reply.

The user's message is committed before the model is asked, and the assistant's reply
when the stream ends — also when the model fails part-way or the browser goes away, so
what was shown is what is kept. A reply whose browser went away (the Stop button aborts
the request) is kept marked ``stopped``; the handler's cancellation closes the upstream
call and frees its admission slot (``backend_call``). The reply is streamed to the
browser as small JSON events (``delta``, then ``done`` or ``error``; a reply with no
text is not stored and ends in an ``error``, so an empty assistant message is never
sent upstream later); the browser renders
its markdown into DOM nodes, never as HTML. The stored user message's id comes in the
``X-User-Message-Id`` header. Rewinding the history and storing the question is one
transaction.

``regenerate: true`` asks again from the last user message (later messages are
dropped); ``edit: <id>`` replaces that user message with ``content`` and drops every
later message.

What is kept is bounded: a reply is cut at ``MAX_REPLY`` characters (kept marked
``stopped``, the upstream call closed, an ``error`` event says so); a question that would
take the conversation past ``MAX_CONVERSATION`` characters is a 409 ``conversation_full``
before anything is stored or sent. A conversation deleted while its reply is written
(or its user) ends the stream with an ``error`` event; the reply is not stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from ..errors import (
    Conflict,
    GatewayError,
    InvalidRequest,
    NotFound,
    StorageUnavailable,
    UpstreamError,
)
from ..routing.call import backend_call
from ..routing.router import resolve, upstream_body
from ..routing.upstream import UpstreamCall
from ..typedefs import ACCESS, REGISTRY, REQUEST_ID, UI_STATE, UI_USER
from ..usage import tokens
from ..wire.body import read_json_object
from ..wire.model_name import check_model_name
from .api import requested_conversation_id
from .pages import chat_models

log = logging.getLogger("gateway.ui")
MAX_MESSAGE = 32_000
# A reply is cut here (what came is kept, marked stopped; the upstream call is closed): more
# than any model writes in one answer, and a backend that never stops cannot fill memory.
MAX_REPLY = 256_000
# A conversation holding this much text takes no new question (409): it is sent whole to
# the model at every turn, so a longer one would fit no model's context anyway.
MAX_CONVERSATION = 1_000_000
TITLE_CHARS = 60
EMPTY_REPLY = "the model returned nothing"
GONE = "the conversation was deleted; the reply was not kept"


async def send_message(request: web.Request) -> web.StreamResponse:
    conversation_id, user = requested_conversation_id(request), request[UI_USER]
    record = request[ACCESS]  # the usage ledger's row: this user's, also when it fails
    record.ui_user = user.username
    body = await read_json_object(request)
    regenerate = body.get("regenerate", False)
    edit = body.get("edit")
    if not isinstance(regenerate, bool):
        raise InvalidRequest("'regenerate' must be true or false", param="regenerate")
    if edit is not None and (isinstance(edit, bool) or not isinstance(edit, int)):
        raise InvalidRequest("'edit' must be the id of a message you sent", param="edit")
    content = body.get("content")
    if not regenerate and (
        not isinstance(content, str) or not content.strip() or len(content) > MAX_MESSAGE
    ):
        raise InvalidRequest(
            f"'content' must be text of 1 to {MAX_MESSAGE} characters", param="content"
        )
    users = request.app[UI_STATE].users

    def load(db: Any) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]] | None:
        conversation = db.conversation(user.id, conversation_id)
        if conversation is None:
            return None
        return conversation, db.messages(conversation_id), db.settings(user.id)

    loaded = await users.run(load)
    if loaded is None:
        raise NotFound("No such conversation", code="conversation_not_found")
    conversation, history, settings = loaded
    history, content, cut_from = _rewind(history, content, regenerate, edit)
    model = _model(request, body.get("model"), conversation, settings)
    route = resolve(request.app[REGISTRY].current, model, "chat")
    record.asked_for(model, stream=True)
    record.backend = route.backend.name
    title = conversation["title"] or content.strip().splitlines()[0][:TITLE_CHARS]

    def store_question(db: Any) -> int | None:
        with db.transaction():  # all or nothing: never a cut history without its question
            if db.conversation(user.id, conversation_id) is None:
                return None  # deleted since it was loaded
            if cut_from is not None:
                db.truncate_messages(conversation_id, cut_from)
            if not regenerate and (
                db.conversation_chars(conversation_id) + len(content) > MAX_CONVERSATION
            ):
                raise Conflict(  # rolls back the rewind too
                    f"This conversation holds the most text kept in one ({MAX_CONVERSATION}"
                    " characters); start a new conversation",
                    code="conversation_full",
                )
            message_id = (
                history[-1]["id"]
                if regenerate
                else db.add_message(conversation_id, "user", content)
            )
            db.update_conversation(user.id, conversation_id, {"title": title, "model": model})
        return int(message_id)

    question_id = await users.run(store_question)
    if question_id is None:
        raise NotFound("No such conversation", code="conversation_not_found")
    if regenerate:
        history = history[:-1]  # the question itself is sent as the last message
    messages = _messages(settings, history, content)
    payload: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if settings.get("temperature") is not None:
        payload["temperature"] = settings["temperature"]
    async with backend_call(
        route.backend,
        "chat",
        "chat/completions",
        upstream_body(payload, route),
        request[REQUEST_ID],
    ) as call:
        return await _relay(request, call, conversation_id, title, question_id, payload)


def _rewind(
    history: list[dict[str, Any]], content: Any, regenerate: bool, edit: int | None
) -> tuple[list[dict[str, Any]], str, int | None]:
    """The history the reply builds on, the question, and the first message id to drop.

    Regenerating keeps the last user message (its reply and anything after go); editing
    drops the edited message and everything after it.
    """
    if regenerate:
        asked = [m for m in history if m["role"] == "user"]
        if not asked:
            raise InvalidRequest("There is no message to answer again", param="regenerate")
        last = asked[-1]
        kept = [m for m in history if m["id"] <= last["id"]]
        return kept, str(last["content"]), last["id"] + 1
    if edit is not None:
        edited = next((m for m in history if m["id"] == edit and m["role"] == "user"), None)
        if edited is None:
            raise NotFound("No such message of yours here", code="message_not_found")
        return [m for m in history if m["id"] < edit], str(content), edit
    return history, str(content), None


def _model(
    request: web.Request, asked: Any, conversation: dict[str, Any], settings: dict[str, Any]
) -> str:
    if asked not in (None, ""):
        return check_model_name(asked)
    for candidate in (conversation.get("model"), settings.get("default_model")):
        if candidate:
            return str(candidate)
    models = chat_models(request)
    if not models:
        raise InvalidRequest("No chat model is configured", param="model")
    return models[0]


def _messages(
    settings: dict[str, Any], history: list[dict[str, Any]], content: str
) -> list[dict[str, Any]]:
    messages = []
    if settings.get("system_prompt"):
        messages.append({"role": "system", "content": settings["system_prompt"]})
    messages += [{"role": m["role"], "content": m["content"]} for m in history]
    messages.append({"role": "user", "content": content})
    return messages


async def _relay(
    request: web.Request,
    call: UpstreamCall,
    conversation_id: int,
    title: str,
    question_id: int,
    payload: dict[str, Any],
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-User-Message-Id": str(question_id),
        }
    )
    await response.prepare(request)
    parts: list[str] = []
    saved: asyncio.Future[int] | None = None
    record = request[ACCESS]
    counted = False
    kept = 0
    try:
        try:
            async for event in call.events():
                if event.startswith((b"data: [DONE]", b"data:[DONE]")):
                    break
                text = _delta(event)
                if text:
                    text = text[: MAX_REPLY - kept]
                    kept += len(text)
                    parts.append(text)
                    record.first_token()
                    await response.write(_frame({"type": "delta", "content": text}))
                    if kept >= MAX_REPLY:  # leaving closes the upstream call
                        raise UpstreamError(f"the reply was cut at {MAX_REPLY} characters")
                elif b'"usage"' in event and not counted:
                    _, found, _ = tokens.tail_usage(event, False)
                    if found is not None:
                        record.prompt_tokens, record.completion_tokens = found
                        counted = True
            else:
                raise UpstreamError("the model ended its reply early")
        except GatewayError as exc:
            record.stream_failed = True
            cut = kept >= MAX_REPLY
            saved = _save(request, conversation_id, parts, stopped=cut) if parts else _nothing()
            await response.write(_frame({"type": "error", "message": exc.message}))
            return response
        if not "".join(parts).strip():  # nothing to keep, and nothing to send upstream later
            record.stream_failed = True
            saved = _nothing()
            await response.write(_frame({"type": "error", "message": EMPTY_REPLY}))
            return response
        saved = _save(request, conversation_id, parts)
        try:
            message_id = await saved
        except StorageUnavailable as exc:  # the reply was shown but could not be stored
            await response.write(_frame({"type": "error", "message": exc.message}))
            return response
        if not message_id:  # deleted (or its user was) while the reply was written
            await response.write(_frame({"type": "error", "message": GONE}))
            return response
        await response.write(_frame({"type": "done", "message_id": message_id, "title": title}))
        return response
    finally:
        if saved is None and parts:  # the browser went away (or stopped): keep what it saw
            _save(request, conversation_id, parts, stopped=True)
        if not counted:  # the backend reported no usage: estimate it
            record.prompt_tokens = tokens.estimate(tokens.prompt_chars(payload))
            record.completion_tokens = tokens.estimate(sum(len(part) for part in parts))
            record.usage_estimated = True


def _save(
    request: web.Request, conversation_id: int, parts: list[str], *, stopped: bool = False
) -> asyncio.Future[int]:
    """Store the reply on the database thread; it completes even if this task is cancelled."""
    state = request.app[UI_STATE]
    text = "".join(parts)
    task = asyncio.ensure_future(
        state.users.run(
            lambda db: db.add_message(conversation_id, "assistant", text, stopped=stopped)
        )
    )
    state.pending.add(task)
    task.add_done_callback(state.pending.discard)
    task.add_done_callback(lambda done: done.cancelled() or done.exception())  # seen: no warning
    return task


def _nothing() -> asyncio.Future[int]:
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    done.set_result(0)
    return done


def _delta(event: bytes) -> str:
    for line in event.splitlines():
        if line.startswith(b"data:"):
            try:
                chunk = json.loads(line[5:])
                content = chunk["choices"][0]["delta"].get("content")
                return content if isinstance(content, str) else ""
            except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
                return ""
    return ""


def _frame(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"
