"""Every route of the API in one table, with names."""

from __future__ import annotations

from aiohttp import web

from ..agents import api as agents
from ..images import api as images
from ..music import api as music
from ..responses import api as responses
from ..toolbus import api as tools
from ..toolbus import mcp
from . import openai, openapi, status


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", status.healthz, name="healthz", allow_head=True)
    app.router.add_get("/readyz", status.readyz, name="readyz", allow_head=True)
    app.router.add_get("/metrics", status.metrics, name="metrics")
    app.router.add_get("/openapi.json", openapi.openapi, name="openapi")
    app.router.add_get("/v1/models", openai.list_models, name="models")
    app.router.add_post("/v1/chat/completions", openai.chat_completions, name="chat")
    app.router.add_post("/v1/completions", openai.completions, name="completions")
    app.router.add_post("/v1/embeddings", openai.embeddings, name="embeddings")
    app.router.add_post("/v1/images/generations", images.generations, name="images")
    app.router.add_post("/v1/music/generations", music.generations, name="music")
    app.router.add_get("/ui/heartmula/audio/{filename}", music.audio, name="music_audio")
    app.router.add_get("/music/{filename}", music.music_file, name="music_file")
    app.router.add_get("/v1/tools", tools.list_tools, name="tools")
    app.router.add_get("/v1/tools/replay/{replay_id}", tools.get_replay, name="tool_record")
    app.router.add_post("/v1/tools/replay/{replay_id}", tools.replay, name="tool_replay")
    app.router.add_post("/v1/tools/{name}", tools.call_tool, name="tool_call")
    app.router.add_post("/v1/agent/run", agents.run, name="agent_run")
    app.router.add_get("/v1/agent/replay/{run_id}", agents.get_run, name="agent_record")
    app.router.add_post("/v1/agent/replay/{run_id}", agents.replay, name="agent_replay")
    app.router.add_post("/mcp", mcp.endpoint, name="mcp")
    app.router.add_get("/v1/gateway/status", status.gateway_status, name="gateway_status")
    app.router.add_get("/images/{name}", images.image_file, name="image_file", allow_head=True)
    # The OpenAI Responses API
    app.router.add_post("/v1/responses", responses.create, name="responses")
    app.router.add_get("/v1/responses/{response_id}", responses.retrieve, name="response")
    app.router.add_delete("/v1/responses/{response_id}", responses.delete, name="response_delete")
