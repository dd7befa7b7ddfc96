"""What the calling key may use, known everywhere the request goes without being passed.

The bearer middleware binds the calling key here (a ``ContextVar``: it follows the
request's task and the tasks it starts, and nothing else) for keys with a scope, and
unbinds it when the request ends. Code deep in the request asks:

- ``require_model(name, *also)``: the router calls it in ``resolve`` with the names the
  model stands for (an alias by its own name; ``backend/model`` by that or its model
  part; anything else by itself), so every face (OpenAI, Anthropic, Ollama, agents) is
  checked without each handler remembering; a 403 ``permission_error`` names the model.
- ``allows_model(name)``: for listings (``/v1/models`` lists only what the key may use).
- ``allows_tool(name)``: the tool bus lists and runs only the key's tools.

With nothing bound (static tokens, the UI, the gateway's own work) everything is allowed.

``endpoint_of(path)`` is the one table from paths to the endpoint names keys are scoped
by. Listing models, the Ollama face's ``/api/tags``/``show``/``version``/``ps`` and a
key's own usage (``/v1/gateway/usage/me``) are open to every key; every other path not
in the table is allowed only to a key without an ``endpoints`` scope.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

from ..errors import Forbidden
from .keys import ApiKey

_current: ContextVar[ApiKey | None] = ContextVar("gateway_api_key", default=None)

ANY_KEY = "any"  # the endpoint name of paths every key may call

_EXACT = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/rerank": "embeddings",  # reranking runs on retrieval models, like embeddings
    "/v1/reranking": "embeddings",  # llama.cpp's name for the same route
    "/v1/models": ANY_KEY,
    "/v1/gateway/usage/me": ANY_KEY,
    "/mcp": "tools",
    "/metrics": "admin",
    "/api/chat": "chat",
    "/api/generate": "chat",
    "/api/embed": "embeddings",
    "/api/embeddings": "embeddings",
    "/api/tags": ANY_KEY,
    "/api/show": ANY_KEY,
    "/api/version": ANY_KEY,
    "/api/ps": ANY_KEY,
}
# Longest first is not needed: no prefix below is a prefix of another.
_PREFIXES = (
    ("/v1/models/", ANY_KEY),
    ("/v1/images/", "images"),
    ("/v1/audio/", "audio"),
    ("/v1/music/", "music"),
    ("/v1/tools", "tools"),
    ("/v1/agent/", "agents"),
    ("/v1/responses", "responses"),
    ("/v1/messages", "messages"),
    ("/v1/gateway/", "admin"),
)


def endpoint_of(path: str) -> str | None:
    """The endpoint name of ``path`` (``None``: not in the table)."""
    found = _EXACT.get(path)
    if found is not None:
        return found
    for prefix, endpoint in _PREFIXES:
        if path.startswith(prefix):
            return endpoint
    return None


def require_endpoint(key: ApiKey, path: str) -> None:
    endpoint = endpoint_of(path)
    if endpoint == ANY_KEY or key.allows_endpoint(endpoint):
        return
    what = f"the '{endpoint}' endpoint" if endpoint else f"'{path[:100]}'"
    raise Forbidden(f"API key '{key.name}' may not use {what}", code="endpoint_not_allowed")


def bind(key: ApiKey) -> Token[ApiKey | None]:
    return _current.set(key)


def unbind(token: Token[ApiKey | None]) -> None:
    _current.reset(token)


def current() -> ApiKey | None:
    return _current.get()


def allows_model(name: str, *also: str) -> bool:
    """Whether the calling key may use ``name`` (or one of the other names it stands
    for, ``also``: the router passes a ``backend/model``'s model part)."""
    key = _current.get()
    return key is None or any(key.allows_model(each) for each in (name, *also))


def require_model(name: str, *also: str) -> None:
    key = _current.get()
    if key is not None and not any(key.allows_model(each) for each in (name, *also)):
        raise Forbidden(
            f"API key '{key.name}' may not use model '{name[:128]}'",
            param="model",
            code="model_not_allowed",
        )


def allows_tool(name: str) -> bool:
    key = _current.get()
    return key is None or key.allows_tool(name)
