"""``GET /openapi.json``: the gateway's API as OpenAPI 3.1, from one table.

Request schemas state what the gateway checks (unknown fields pass through to backends,
so objects stay open); every operation lists the error envelope it can answer with.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import __version__

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool", "function"]},
        "content": {"type": ["string", "array", "null"]},
    },
    "additionalProperties": True,
}
_TOOL = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "minLength": 1, "examples": ["function", "custom"]},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "description": {"type": "string"},
                "parameters": {"type": "object"},
            },
        },
    },
    "if": {"properties": {"type": {"const": "function"}}},
    "then": {"required": ["function"]},
}
_SAMPLING = {
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "max_tokens": {"type": "integer", "minimum": 1},
    "n": {"type": "integer", "minimum": 1},
    "seed": {"type": "integer"},
    "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "stream": {"type": "boolean"},
}
_TEXT_OR_TOKENS = {
    "oneOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
        {"type": "array", "items": {"type": "integer"}, "minItems": 1},
        {
            "type": "array",
            "items": {"type": "array", "items": {"type": "integer"}},
            "minItems": 1,
        },
    ]
}
_MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
        "capabilities": {"type": "array", "items": {"type": "string"}},
    },
}
SCHEMAS: dict[str, Any] = {
    "Error": _ERROR,
    "Model": _MODEL,
    "ChatRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "examples": ["default"]},
            "messages": {"type": "array", "items": _MESSAGE, "minItems": 1},
            "tools": {"type": "array", "items": _TOOL, "maxItems": 128},
            "tool_choice": {
                "oneOf": [
                    {"enum": ["none", "auto", "required"]},
                    {
                        "type": "object",
                        "required": ["function"],
                        "properties": {
                            "type": {"const": "function"},
                            "function": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}},
                            },
                        },
                    },
                    {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {"enum": ["custom", "allowed_tools"]},
                            "custom": {"type": "object"},
                            "allowed_tools": {"type": "object"},
                        },
                    },
                ]
            },
            "stream_options": {"type": "object"},
            **_SAMPLING,
        },
        "additionalProperties": True,
    },
    "CompletionRequest": {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "examples": ["default"]},
            "prompt": _TEXT_OR_TOKENS,
            **_SAMPLING,
        },
        "additionalProperties": True,
    },
    "EmbeddingRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "examples": ["mock-embed"]},
            "input": _TEXT_OR_TOKENS,
            "encoding_format": {"enum": ["float", "base64"]},
            "dimensions": {"type": "integer", "minimum": 1},
        },
        "additionalProperties": True,
    },
    "TranscriptionRequest": {
        "type": "object",
        "required": ["file", "model"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "examples": ["whisper-1"]},
            "file": {"type": "string", "contentMediaType": "application/octet-stream"},
            "language": {"type": "string"},
            "prompt": {"type": "string"},
            "response_format": {"enum": ["json", "text", "srt", "verbose_json", "vtt"]},
            "temperature": {"type": "number"},
            "stream": {"type": "boolean"},
        },
        "additionalProperties": True,
    },
    "Transcription": {
        "type": "object",
        "required": ["text"],
        "properties": {"text": {"type": "string"}},
        "additionalProperties": True,
    },
    "SpeechRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "examples": ["tts-1"]},
            "input": {"type": "string", "minLength": 1},
            "voice": {"oneOf": [{"type": "string"}, {"type": "object"}]},
            "response_format": {"enum": ["mp3", "opus", "aac", "flac", "wav", "pcm"]},
            "speed": {"type": "number", "minimum": 0.25, "maximum": 4.0},
            "stream_format": {"enum": ["audio", "sse"]},
        },
        "additionalProperties": True,
    },
    "RerankRequest": {
        "type": "object",
        "required": ["model", "query", "documents"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "examples": ["bge-reranker-v2-m3"]},
            "query": {"type": "string", "minLength": 1},
            "documents": {
                "type": "array",
                "minItems": 1,
                "items": {"oneOf": [{"type": "string"}, {"type": "object"}]},
            },
            "top_n": {"type": "integer", "minimum": 1},
            "return_documents": {"type": "boolean"},
        },
        "additionalProperties": True,
    },
    "Rerank": {
        "type": "object",
        "required": ["results"],
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "relevance_score"],
                    "properties": {
                        "index": {"type": "integer"},
                        "relevance_score": {"type": "number"},
                    },
                },
            }
        },
        "additionalProperties": True,
    },
    "ImageRequest": {
        "type": "object",
        "required": ["prompt"],
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "maxLength": 32000},
            "model": {"type": "string", "minLength": 1},
            "n": {"type": "integer", "minimum": 1, "maximum": 10},
            "size": {"type": "string", "pattern": "^[0-9]+x[0-9]+$"},
            "response_format": {"enum": ["url", "b64_json"]},
            "seed": {"type": "integer"},
            "negative_prompt": {"type": "string"},
            "steps": {"type": "integer", "minimum": 1, "maximum": 150},
            "cfg_scale": {"type": "number", "minimum": 0, "maximum": 30},
            "sampler": {"type": "string"},
            "style": {"type": "string"},
            "quality": {"type": "string"},
        },
        "additionalProperties": True,
    },
    "MusicRequest": {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "maxLength": 8000},
            "lyrics": {"type": "string", "maxLength": 8000},
            "style": {"type": "string", "maxLength": 8000},
            "tags": {"type": "string", "maxLength": 8000},
            "duration": {"type": "integer", "minimum": 1, "maximum": 300},
            "temperature": {"type": "number", "minimum": 0, "maximum": 5},
            "top_k": {"type": "integer", "minimum": 1, "maximum": 1000},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "model": {"type": "string", "minLength": 1},
        },
        "additionalProperties": True,
    },
    "ToolCallRequest": {
        "type": "object",
        "properties": {"arguments": {}},
        "additionalProperties": True,
    },
    "AgentRunRequest": {
        "type": "object",
        "required": ["agent"],
        "properties": {
            "agent": {"type": "string", "examples": ["default"]},
            "input": {"type": "string", "minLength": 1},
            "messages": {"type": "array", "items": _MESSAGE, "minItems": 1},
        },
        "additionalProperties": True,
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _MODEL},
        },
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["choices"],
        "properties": {"id": {"type": "string"}, "choices": {"type": "array"}},
        "additionalProperties": True,
    },
    "Embeddings": {
        "type": "object",
        "required": ["data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array"}},
        "additionalProperties": True,
    },
    "ImagesResponse": {
        "type": "object",
        "required": ["created", "data"],
        "properties": {
            "created": {"type": "integer"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"url": {"type": "string"}, "b64_json": {"type": "string"}},
                },
            },
        },
    },
    "MusicResponse": {
        "type": "object",
        "required": ["audio_url", "status"],
        "properties": {
            "id": {"type": ["string", "null"]},
            "status": {"type": "string"},
            "audio_url": {"type": "string", "pattern": "^/ui/heartmula/audio/"},
            "download_url": {"type": "string", "pattern": "^/music/"},
            "duration": {"type": ["integer", "number", "null"]},
            "backend": {"type": "string"},
        },
    },
    "ToolList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "version", "description", "parameters"],
                },
            },
        },
    },
    "ToolCall": {
        "type": "object",
        "required": ["replay_id", "request_hash", "ok", "duration_ms"],
        "properties": {
            "replay_id": {"type": "string", "pattern": "^tool-[0-9a-f]{24}$"},
            "request_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "ok": {"type": "boolean"},
            "result": {},
            "error": {"type": "object"},
            "duration_ms": {"type": "number"},
        },
    },
    "ToolReplay": {
        "type": "object",
        "required": ["original_replay_id", "replay", "matches"],
        "properties": {"matches": {"type": "boolean"}},
    },
    "AgentRun": {
        "type": "object",
        "required": ["run_id", "agent", "ok", "stop_reason"],
        "properties": {
            "run_id": {"type": "string", "pattern": "^run-[0-9a-f]{24}$"},
            "ok": {"type": "boolean"},
            "stop_reason": {"type": "string"},
        },
    },
    "AgentReplay": {
        "type": "object",
        "required": ["run_id", "deterministic"],
        "properties": {"deterministic": {"type": "boolean"}},
    },
    "ModelState": {
        "type": "object",
        "required": ["id", "backend", "state"],
        "properties": {
            "id": {"type": "string"},
            "backend": {"type": "string"},
            "state": {"enum": ["unloaded", "loading", "loaded", "draining", "failed"]},
            "loaded_since": {"type": ["number", "null"]},
            "idle_s": {"type": ["number", "null"]},
            "memory_mb": {"type": ["number", "null"]},
            "group": {"type": ["string", "null"]},
            "last_load_s": {"type": ["number", "null"]},
        },
    },
    "ModelStates": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/ModelState"}},
        },
    },
    "ModelEvent": {
        "type": "object",
        "required": ["type", "backend", "at"],
        "properties": {
            "type": {"enum": ["load", "ready", "unload", "eviction", "crash"]},
            "backend": {"type": "string"},
            "at": {"type": "number"},
        },
    },
    "GatewayStatus": {
        "type": "object",
        "required": ["object", "backends"],
        "properties": {"object": {"const": "gateway.status"}, "backends": {"type": "array"}},
    },
    "Usage": {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["requests", "prompt_tokens", "completion_tokens", "errors"],
                    "properties": {
                        "key": {"type": ["string", "null"]},
                        "user": {"type": ["string", "null"]},
                        "model": {"type": "string"},
                        "day": {"type": "string", "format": "date"},
                        "requests": {"type": "integer", "minimum": 0},
                        "prompt_tokens": {"type": "integer", "minimum": 0},
                        "completion_tokens": {"type": "integer", "minimum": 0},
                        "errors": {"type": "integer", "minimum": 0},
                    },
                    "additionalProperties": False,
                },
            }
        },
    },
    # The OpenAI Responses API (a backend's own, or translated onto chat completions)
    "ResponseRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "examples": ["default"]},
            "input": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "object"}, "maxItems": 1000},
                ]
            },
            "instructions": {"type": ["string", "null"]},
            "previous_response_id": {"type": ["string", "null"], "maxLength": 128},
            "store": {"type": ["boolean", "null"]},
            "stream": {"type": ["boolean", "null"]},
            "tools": {"type": "array", "items": {"type": "object"}, "maxItems": 128},
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
            "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "max_output_tokens": {"type": ["integer", "null"], "minimum": 1},
            "text": {"type": ["object", "null"]},
            "metadata": {"type": ["object", "null"], "maxProperties": 16},
        },
        "additionalProperties": True,
    },
    "Response": {
        "type": "object",
        "required": ["id", "object", "output"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "response"},
            "status": {"type": "string"},
            "output": {"type": "array"},
            "usage": {"type": ["object", "null"]},
        },
        "additionalProperties": True,
    },
    "ResponseDeleted": {
        "type": "object",
        "required": ["id", "object", "deleted"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "response"},
            "deleted": {"const": True},
        },
    },
}


# The Anthropic Messages face (``api.anthropic``): its own request, reply and error shapes.
_ANTHROPIC_CONTENT = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]}
_ANTHROPIC_MESSAGES = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["role", "content"],
        "properties": {"role": {"enum": ["user", "assistant"]}, "content": _ANTHROPIC_CONTENT},
    },
}
SCHEMAS.update(
    {
        "AnthropicError": {
            "type": "object",
            "required": ["type", "error"],
            "properties": {
                "type": {"const": "error"},
                "error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
        "AnthropicMessageRequest": {
            "type": "object",
            "required": ["model", "max_tokens", "messages"],
            "properties": {
                "model": {"type": "string", "minLength": 1, "examples": ["default"]},
                "max_tokens": {"type": "integer", "minimum": 1},
                "messages": _ANTHROPIC_MESSAGES,
                "system": _ANTHROPIC_CONTENT,
                "tools": {"type": "array", "items": {"type": "object"}, "maxItems": 128},
                "tool_choice": {"type": "object"},
                "stop_sequences": {"type": "array", "items": {"type": "string", "minLength": 1}},
                "temperature": {"type": "number", "minimum": 0, "maximum": 1},
                "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                "stream": {"type": "boolean"},
            },
            "additionalProperties": True,
        },
        "AnthropicMessage": {
            "type": "object",
            "required": ["id", "type", "role", "content", "model", "stop_reason", "usage"],
            "properties": {
                "id": {"type": "string", "pattern": "^msg_"},
                "type": {"const": "message"},
                "role": {"const": "assistant"},
                "content": {"type": "array", "items": {"type": "object"}},
                "stop_reason": {"type": ["string", "null"]},
                "usage": {"type": "object", "required": ["input_tokens", "output_tokens"]},
            },
        },
        "AnthropicCountTokensRequest": {
            "type": "object",
            "required": ["model", "messages"],
            "properties": {
                "model": {"type": "string", "minLength": 1, "examples": ["default"]},
                "messages": _ANTHROPIC_MESSAGES,
                "system": _ANTHROPIC_CONTENT,
                "tools": {"type": "array", "items": {"type": "object"}, "maxItems": 128},
            },
            "additionalProperties": True,
        },
        "AnthropicTokenCount": {
            "type": "object",
            "required": ["input_tokens"],
            "properties": {"input_tokens": {"type": "integer", "minimum": 0}},
        },
    }
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _operation(
    summary: str,
    response: str,
    *,
    body: str | None = None,
    errors: tuple[int, ...] = (),
    stream: bool = False,
    parameter: str | None = None,
    error: str = "Error",
) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _ref(response)}}
    if stream:
        content["text/event-stream"] = {"schema": _SSE_EVENT}
    responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
    for status in sorted({401, *errors}):
        responses[str(status)] = {
            "description": "Error",
            "content": {"application/json": {"schema": _ref(error)}},
        }
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if parameter is not None:
        operation["parameters"] = [
            {"name": parameter, "in": "path", "required": True, "schema": {"type": "string"}}
        ]
    return operation


_ROUTED = (400, 404, 413, 429, 502, 503, 504)


def _upload(summary: str) -> dict[str, Any]:
    """A transcription: a multipart form in; JSON, text or events out."""
    operation = _operation(summary, "Transcription", errors=_ROUTED, stream=True)
    operation["responses"]["200"]["content"]["text/plain"] = {"schema": {"type": "string"}}
    operation["requestBody"] = {
        "required": True,
        "content": {"multipart/form-data": {"schema": _ref("TranscriptionRequest")}},
    }
    return operation


def _speech() -> dict[str, Any]:
    """Text to speech: JSON in, audio bytes (or events) out."""
    operation = _operation(
        "Text to speech (audio streamed back)",
        "Error",
        body="SpeechRequest",
        errors=_ROUTED,
        stream=True,
    )
    operation["responses"]["200"]["content"] = {
        "audio/*": {"schema": {"type": "string", "contentMediaType": "audio/*"}},
        "text/event-stream": {"schema": _SSE_EVENT},
    }
    return operation


def _optional_body(operation: dict[str, Any]) -> dict[str, Any]:
    """A lifecycle action: ``{"wait": false}`` answers 202 before it is done."""
    schema = {"type": "object", "properties": {"wait": {"type": "boolean", "default": True}}}
    operation["requestBody"] = {
        "required": False,
        "content": {"application/json": {"schema": schema}},
    }
    operation["responses"]["202"] = {
        "description": "Started",
        "content": {"application/json": {"schema": _ref("ModelState")}},
    }
    return operation


# One server-sent event of a stream: a JSON chunk, an error envelope, or [DONE].
_SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}
# since/until: YYYY-MM-DD (UTC, inclusive); group_by: comma-separated dimensions.
_USAGE_QUERY = [
    {"name": name, "in": "query", "required": False, "schema": {"type": "string", **extra}}
    for name, extra in (
        ("since", {"format": "date"}),
        ("until", {"format": "date"}),
        ("group_by", {"examples": ["key,model,day"]}),
    )
]
PATHS: dict[str, Any] = {
    "/v1/models": {"get": _operation("Models of every backend, and the aliases", "ModelList")},
    "/v1/models/{model}": {
        "get": _operation(
            "One model (ids may hold / and :)", "Model", errors=(404,), parameter="model"
        )
    },
    "/v1/chat/completions": {
        "post": _operation(
            "Chat (JSON or SSE)", "ChatCompletion", body="ChatRequest", errors=_ROUTED, stream=True
        )
    },
    "/v1/completions": {
        "post": _operation(
            "Text completion",
            "ChatCompletion",
            body="CompletionRequest",
            errors=_ROUTED,
            stream=True,
        )
    },
    "/v1/embeddings": {
        "post": _operation("Embeddings", "Embeddings", body="EmbeddingRequest", errors=_ROUTED)
    },
    "/v1/images/generations": {
        "post": _operation("Text to image", "ImagesResponse", body="ImageRequest", errors=_ROUTED)
    },
    "/v1/music/generations": {
        "post": _operation("Text to music", "MusicResponse", body="MusicRequest", errors=_ROUTED)
    },
    "/v1/tools": {"get": _operation("Tools this token may call", "ToolList")},
    "/v1/tools/{name}": {
        "post": _operation(
            "Call a tool",
            "ToolCall",
            body="ToolCallRequest",
            errors=(400, 403, 404, 413, 429),
            parameter="name",
        )
    },
    "/v1/tools/replay/{replay_id}": {
        "get": _operation("A recorded tool call", "ToolCall", errors=(404,), parameter="replay_id"),
        "post": _operation(
            "Run a recorded call again and compare",
            "ToolReplay",
            errors=(403, 404, 429),
            parameter="replay_id",
        ),
    },
    "/v1/agent/run": {
        "post": _operation(
            "Run an agent", "AgentRun", body="AgentRunRequest", errors=(400, 404, 413)
        )
    },
    "/v1/agent/replay/{run_id}": {
        "get": _operation(
            "An agent run's transcript", "AgentRun", errors=(404,), parameter="run_id"
        ),
        "post": _operation(
            "Replay a run against its recording", "AgentReplay", errors=(404,), parameter="run_id"
        ),
    },
    "/v1/gateway/status": {"get": _operation("Backends, health and limits", "GatewayStatus")},
    "/v1/gateway/usage": {
        "get": {
            **_operation("Every key's usage (admin keys)", "Usage", errors=(400, 403, 503)),
            "parameters": _USAGE_QUERY,
        }
    },
    "/v1/gateway/usage/me": {
        "get": {
            **_operation("This key's own usage", "Usage", errors=(400, 503)),
            "parameters": _USAGE_QUERY,
        }
    },
    "/v1/messages": {
        "post": _operation(
            "Anthropic Messages API, translated onto chat (JSON or SSE); x-api-key works too",
            "AnthropicMessage",
            body="AnthropicMessageRequest",
            errors=_ROUTED,
            stream=True,
            error="AnthropicError",
        )
    },
    "/v1/messages/count_tokens": {
        "post": _operation(
            "An estimate of a Messages request's input tokens",
            "AnthropicTokenCount",
            body="AnthropicCountTokensRequest",
            errors=(400, 404, 413),
            error="AnthropicError",
        )
    },
    "/v1/audio/transcriptions": {"post": _upload("Speech to text (multipart upload)")},
    "/v1/audio/translations": {"post": _upload("Speech to English text (multipart upload)")},
    "/v1/audio/speech": {"post": _speech()},
    "/v1/rerank": {
        "post": _operation("Rerank documents", "Rerank", body="RerankRequest", errors=_ROUTED)
    },
    "/v1/reranking": {
        "post": _operation(
            "Rerank documents (llama.cpp's name)", "Rerank", body="RerankRequest", errors=_ROUTED
        )
    },
    "/v1/gateway/models": {
        "get": _operation(
            "Models loaded on demand, and their state (admin)", "ModelStates", errors=(403,)
        )
    },
    "/v1/gateway/models/{id}/load": {
        "post": _optional_body(
            _operation(
                "Load a model now (admin)",
                "ModelState",
                errors=(400, 403, 404, 502, 503),
                parameter="id",
            )
        )
    },
    "/v1/gateway/models/{id}/unload": {
        "post": _optional_body(
            _operation(
                "Unload a model, after its requests in flight (admin)",
                "ModelState",
                errors=(400, 403, 404, 502),
                parameter="id",
            )
        )
    },
    "/v1/gateway/events": {
        "get": _operation(
            "Model lifecycle events: load, ready, unload, eviction, crash (admin; SSE)",
            "ModelEvent",
            errors=(403, 429),
            stream=True,
        )
    },
    "/v1/responses": {
        "post": _operation(
            "Create a response (JSON or SSE events)",
            "Response",
            body="ResponseRequest",
            errors=_ROUTED,
            stream=True,
        )
    },
    "/v1/responses/{response_id}": {
        "get": _operation(
            "A response this token stored", "Response", errors=(404, 503), parameter="response_id"
        ),
        "delete": _operation(
            "Delete a response this token stored",
            "ResponseDeleted",
            errors=(404, 503),
            parameter="response_id",
        ),
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Local AI Gateway", "version": __version__},
        "security": [{"bearer": []}],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())
