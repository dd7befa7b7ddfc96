"""Which API face a path belongs to, and the error body that face's clients expect.

The gateway speaks three client protocols; a client library parses errors only in its
own shape, so the one error middleware asks here which shape to use:

- OpenAI (``/v1/...`` except below, ``/mcp``): ``{"error": {"message", "type", "param",
  "code"}}``.
- Anthropic Messages (``/v1/messages``, ``/v1/messages/...``): ``{"type": "error",
  "error": {"type", "message"}}`` with Anthropic's error types.
- Ollama (``/api/...``): ``{"error": "<message>"}``.

The face also decides where the token may come from: Anthropic clients send
``x-api-key``; everyone else sends ``Authorization: Bearer``.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from ..errors import error_envelope


class Face(Enum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OLLAMA = "ollama"


def face_of(path: str) -> Face:
    if path.startswith("/v1/messages") and (len(path) == 12 or path[12] == "/"):
        return Face.ANTHROPIC
    if path == "/api" or path.startswith("/api/"):
        return Face.OLLAMA
    return Face.OPENAI


# Anthropic's error types by status (its API reference, "Errors"); anything else is api_error.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(
    face: Face,
    status: int,
    message: str,
    error_type: str,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """The error body for ``face``; ``error_type``/``param``/``code`` are the OpenAI ones."""
    if face is Face.ANTHROPIC:
        return {
            "type": "error",
            "error": {"type": anthropic_error_type(status), "message": message},
        }
    if face is Face.OLLAMA:
        return {"error": message}
    return error_envelope(message, error_type, param, code)
