"""The OpenAI images request, checked: nothing out of range is silently clamped."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequest
from ..wire.body import required_field
from ..wire.model_name import check_model_name

MAX_PROMPT_CHARS = 32_000
MIN_SIDE, MAX_SIDE = 64, 4096
DEFAULT_SIZE = (1024, 1024)
_SIZE = re.compile(r"^([1-9][0-9]{1,4})x([1-9][0-9]{1,4})$")
# Knobs passed to backends that understand them, with the type each must have.
_KNOBS: dict[str, type | tuple[type, ...]] = {
    "seed": int,
    "negative_prompt": str,
    "steps": int,
    "cfg_scale": (int, float),
    "sampler": str,
    "scheduler": str,
    "style": str,
    "quality": str,
}


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    n: int
    width: int
    height: int
    response_format: str
    model: str | None
    knobs: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def parse_image_request(payload: dict[str, Any]) -> ImageRequest:
    prompt = required_field(payload, "prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("'prompt' must be a non-empty string", param="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            f"'prompt' may be at most {MAX_PROMPT_CHARS} characters", param="prompt"
        )
    n = payload.get("n", 1)
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
        raise InvalidRequest("'n' must be an integer from 1 to 10", param="n")
    width, height = _size(payload.get("size"))
    response_format = payload.get("response_format") or "url"
    if response_format not in ("url", "b64_json"):
        raise InvalidRequest(
            "'response_format' must be 'url' or 'b64_json'", param="response_format"
        )
    model = payload.get("model")
    if model is not None:
        check_model_name(model)
    return ImageRequest(
        prompt=prompt,
        n=n,
        width=width,
        height=height,
        response_format=response_format,
        model=model,
        knobs=_knobs(payload),
    )


def check_pixels(request: ImageRequest, max_pixels: int, backend: str) -> None:
    if request.width * request.height > max_pixels:
        raise InvalidRequest(
            f"size {request.size} is larger than backend '{backend}' allows ({max_pixels} pixels)",
            param="size",
        )


def _size(value: Any) -> tuple[int, int]:
    if value is None or value == "auto":
        return DEFAULT_SIZE
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidRequest("'size' must be WIDTHxHEIGHT, e.g. '1024x1024'", param="size")
    width, height = int(match.group(1)), int(match.group(2))
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise InvalidRequest(
            f"each side of 'size' must be from {MIN_SIDE} to {MAX_SIDE} pixels", param="size"
        )
    return width, height


def _knobs(payload: dict[str, Any]) -> dict[str, Any]:
    knobs = {}
    for name, kind in _KNOBS.items():
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kind):
            raise InvalidRequest(f"'{name}' has the wrong type", param=name)
        knobs[name] = value
    if "steps" in knobs and not 1 <= knobs["steps"] <= 150:
        raise InvalidRequest("'steps' must be from 1 to 150", param="steps")
    if "cfg_scale" in knobs and not 0 <= knobs["cfg_scale"] <= 30:
        raise InvalidRequest("'cfg_scale' must be from 0 to 30", param="cfg_scale")
    return knobs
