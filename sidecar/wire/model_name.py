"""The one check every face makes on a model name before it is routed or stored."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequest

MAX_MODEL_CHARS = 256


def check_model_name(model: Any) -> str:
    """A model name: printable text of sane length (it ends up in headers and logs)."""
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' must be a non-empty string", param="model")
    if len(model) > MAX_MODEL_CHARS or not model.isprintable():
        raise InvalidRequest(
            f"'model' must be printable text of at most {MAX_MODEL_CHARS} characters",
            param="model",
        )
    return model
