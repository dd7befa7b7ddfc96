"""The one check every face makes on a model name before it is routed or stored, and the
``model`` and ``stream`` fields every JSON face reads the same way."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequest
from .body import required_field

MAX_MODEL_CHARS = 256


def is_model_name(model: Any) -> bool:
    """Whether ``model`` is a model name: printable text of sane length (it ends up in
    headers and logs). ``check_model_name`` says why not to a client."""
    return (
        isinstance(model, str)
        and bool(model.strip())
        and len(model) <= MAX_MODEL_CHARS
        and model.isprintable()
    )


def check_model_name(model: Any) -> str:
    """``model`` when it is a model name (``is_model_name``), else the 400 saying why."""
    if is_model_name(model):
        return str(model)
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' must be a non-empty string", param="model")
    raise InvalidRequest(
        f"'model' must be printable text of at most {MAX_MODEL_CHARS} characters",
        param="model",
    )


def model_field(payload: dict[str, Any]) -> str:
    """The body's ``model``: required, and a name ``check_model_name`` accepts."""
    return check_model_name(required_field(payload, "model"))


def stream_field(payload: dict[str, Any], default: bool = False) -> bool:
    """The body's ``stream``: a boolean, ``default`` when absent or null (OpenAI and
    Anthropic do not stream unless asked; Ollama streams unless told not to)."""
    stream = payload.get("stream")
    if stream is None:
        return default
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    return stream
