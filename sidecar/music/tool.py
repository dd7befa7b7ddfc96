"""The ``heartmula_generate`` tool: music generation on the tool bus (for agents)."""

from __future__ import annotations

from typing import Any

from ..errors import GatewayError
from ..toolbus.executors import ToolContext, ToolFailure
from .service import generate_music, parse_music_request

# The schema to declare for the tool in gateway.yaml (shipped in the default config).
PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string", "maxLength": 8000},
        "lyrics": {"type": "string", "maxLength": 8000},
        "style": {"type": "string", "maxLength": 500},
        "tags": {"type": "string", "maxLength": 500},
        "duration": {"type": "integer", "minimum": 1, "maximum": 300},
        "temperature": {"type": "number", "minimum": 0, "maximum": 5},
        "top_k": {"type": "integer", "minimum": 1, "maximum": 1000},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "additionalProperties": False,
}


async def heartmula_generate(context: ToolContext, arguments: dict[str, Any]) -> Any:
    try:
        request = parse_music_request(arguments)
        result = await generate_music(context.registry.current, request, context.request_id)
    except GatewayError as exc:
        raise ToolFailure(exc.code or "music_error", exc.message) from None
    return {
        "audio_path": result["audio_url"],
        "id": result["id"],
        "duration": result["duration"],
        "status": result["status"],
    }
