"""The ``heartmula_generate`` tool: music generation on the tool bus (for agents)."""

from __future__ import annotations

from typing import Any

from ..errors import GatewayError, ToolFailure
from ..toolbus.executors import ToolContext
from .service import generate_music, parse_music_request


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
