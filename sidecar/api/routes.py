"""Every route of the API in one table, with names."""

from __future__ import annotations

from aiohttp import web

from ..agents import api as agents
from ..images import api as images
from ..music import api as music
from ..responses import api as responses
from ..toolbus import api as tools
from ..toolbus import mcp
from ..usage import api as usage
from . import anthropic, audio, models, ollama, openai, openapi, status


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", status.healthz, name="healthz", allow_head=True)
    app.router.add_get("/readyz", status.readyz, name="readyz", allow_head=True)
    app.router.add_get("/metrics", status.metrics, name="metrics")
    app.router.add_get("/openapi.json", openapi.openapi, name="openapi")
    app.router.add_get("/v1/models", openai.list_models, name="models")
    app.router.add_get("/v1/models/{model:.+}", openai.retrieve_model, name="model")
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
    app.router.add_get("/v1/gateway/usage", usage.usage, name="usage")
    app.router.add_get("/v1/gateway/usage/me", usage.usage_me, name="usage_me")
    # The Anthropic Messages face and the Ollama face, both translated onto chat.
    app.router.add_post("/v1/messages", anthropic.messages, name="anthropic_messages")
    app.router.add_post(
        "/v1/messages/count_tokens", anthropic.count_tokens, name="anthropic_count_tokens"
    )
    app.router.add_get("/api/version", ollama.version, name="ollama_version")
    app.router.add_get("/api/tags", ollama.tags, name="ollama_tags")
    app.router.add_post("/api/show", ollama.show, name="ollama_show")
    app.router.add_post("/api/chat", ollama.chat, name="ollama_chat")
    app.router.add_post("/api/generate", ollama.generate, name="ollama_generate")
    app.router.add_post("/api/embed", ollama.embed, name="ollama_embed")
    app.router.add_post("/api/embeddings", ollama.embeddings, name="ollama_embeddings")
    # Audio and rerank, admitted like chat.
    app.router.add_post("/v1/audio/transcriptions", audio.transcriptions, name="transcriptions")
    app.router.add_post("/v1/audio/translations", audio.translations, name="translations")
    app.router.add_post("/v1/audio/speech", audio.speech, name="speech")
    app.router.add_post("/v1/rerank", openai.rerank, name="rerank")
    app.router.add_post("/v1/reranking", openai.rerank, name="reranking")
    # The model lifecycle (admin): model ids may hold '/' and ':'.
    app.router.add_get("/v1/gateway/models", models.list_models, name="gateway_models")
    app.router.add_post("/v1/gateway/models/{id:.+}/load", models.load, name="model_load")
    app.router.add_post("/v1/gateway/models/{id:.+}/unload", models.unload, name="model_unload")
    app.router.add_get("/v1/gateway/events", models.events, name="gateway_events")
    # The OpenAI Responses API
    app.router.add_post("/v1/responses", responses.create, name="responses")
    app.router.add_get("/v1/responses/{response_id}", responses.retrieve, name="response")
    app.router.add_delete("/v1/responses/{response_id}", responses.delete, name="response_delete")
