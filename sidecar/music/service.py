"""Generating music on a backend with the ``music`` capability (a HeartMuLa shim).

The API endpoint and the ``heartmula_generate`` tool both come here, so both get the same
checks, admission and timeout (at least ``duration x 5 + 30`` seconds, as a generation
takes about as long as the audio). Clients get the gateway's audio path, never the
upstream URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest, UpstreamError
from ..routing.call import backend_call
from ..routing.registry import Registry
from ..routing.router import resolve_default
from ..wire.model_name import check_model_name

AUDIO_ROUTE = "/ui/heartmula/audio/"
AUDIO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}\.(wav|mp3|flac|ogg)$")
MAX_DURATION_S = 300
_TEXT_FIELDS = ("prompt", "lyrics", "style", "tags")
_TEXT_LIMIT = 8000
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_STATUS = re.compile(r"[A-Za-z][A-Za-z_-]{0,31}")


@dataclass(frozen=True)
class MusicRequest:
    fields: dict[str, Any]
    duration: int
    model: str | None


def parse_music_request(payload: dict[str, Any]) -> MusicRequest:
    fields: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        value = payload.get(name)
        if value is None:
            continue
        if name == "tags" and isinstance(value, list) and all(isinstance(t, str) for t in value):
            value = ",".join(value)
        if not isinstance(value, str) or len(value) > _TEXT_LIMIT:
            raise InvalidRequest(
                f"'{name}' must be a string of at most {_TEXT_LIMIT} characters", param=name
            )
        fields[name] = value
    duration = payload.get("duration", 30)
    if (
        not isinstance(duration, int)
        or isinstance(duration, bool)
        or not 1 <= duration <= MAX_DURATION_S
    ):
        raise InvalidRequest(
            f"'duration' must be whole seconds from 1 to {MAX_DURATION_S}", param="duration"
        )
    fields["duration"] = duration
    for name, low, high in (("temperature", 0.0, 5.0), ("top_p", 0.0, 1.0)):
        value = payload.get(name)
        if value is not None:
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not low <= value <= high
            ):
                raise InvalidRequest(f"'{name}' must be a number from {low} to {high}", param=name)
            fields[name] = value
    top_k = payload.get("top_k")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 1000:
            raise InvalidRequest("'top_k' must be an integer from 1 to 1000", param="top_k")
        fields["top_k"] = top_k
    model = payload.get("model")
    if model is not None:
        check_model_name(model)
    return MusicRequest(fields, duration, model)


def generation_timeout_s(duration: int) -> float:
    return duration * 5 + 30


async def generate_music(
    registry: Registry, request: MusicRequest, request_id: str
) -> dict[str, Any]:
    """Route, admit, generate; the answer names the gateway's audio path."""
    route = resolve_default(registry, request.model, "music")
    backend = route.backend
    async with backend_call(
        backend,
        "music",
        "v1/music/generations",
        request.fields,
        request_id,
        read_timeout_s=max(generation_timeout_s(request.duration), backend.config.timeouts.read_s),
    ) as call:
        _, reply = await call.read_json()
    name = _audio_name(reply, backend.name)
    # The backend's other fields pass only in their shape (they reach clients, and an
    # agent's context through the tool): else what the gateway knows, or None.
    song_id, status = reply.get("id"), reply.get("status")
    duration, prompt = reply.get("duration"), reply.get("prompt")
    if not (isinstance(duration, int | float) and not isinstance(duration, bool)) or not (
        0 < duration <= 2 * MAX_DURATION_S
    ):
        duration = request.duration
    return {
        "id": song_id if isinstance(song_id, str) and _ID.fullmatch(song_id) else None,
        "status": status if isinstance(status, str) and _STATUS.fullmatch(status) else "completed",
        "audio_url": AUDIO_ROUTE + name,
        "duration": duration,
        "prompt": prompt
        if isinstance(prompt, str) and len(prompt) <= _TEXT_LIMIT
        else request.fields.get("prompt"),
        "backend": backend.name,
    }


def _audio_name(reply: Any, backend: str) -> str:
    url = reply.get("audio_url") if isinstance(reply, dict) else None
    name = url.rsplit("/", 1)[-1] if isinstance(url, str) else ""
    if not AUDIO_NAME.match(name):
        raise UpstreamError(f"backend '{backend}' did not return a usable audio file name")
    return name
