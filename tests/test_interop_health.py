"""Health checks that fit real backends: listed models are not probed at ``/models``, and a
backend that refuses the gateway's credentials is a 502 naming that, not "retry shortly".
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from .conftest import TOKEN, backend_yaml, eventually, gateway_yaml

CHAT = {"model": "shim-model", "messages": [{"role": "user", "content": "hi"}]}


def _shim(seen: list[str], *, key: str | None = None) -> web.Application:
    """A chat-only shim: no ``/models`` route; with ``key``, every route wants that key."""

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path}")
        if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
            return web.json_response({"detail": "invalid api key"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def chat(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "shim-model",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(middlewares=[record])
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", live)
    return app


async def _health(gateway: TestClient) -> dict[str, Any]:
    response = await gateway.get("/v1/gateway/status", headers={"Authorization": f"Bearer {TOKEN}"})
    health: dict[str, Any] = (await response.json())["backends"][0]["health"]
    return health


async def _probed(gateway: TestClient) -> None:
    async def done() -> bool:
        return (await _health(gateway))["state"] != "unknown"

    await eventually(done, "the first probe")


async def test_listed_models_are_not_probed_at_models(
    make_gateway: Any, aiohttp_server: Any, auth: dict[str, str]
) -> None:
    seen: list[str] = []
    server = await aiohttp_server(_shim(seen))
    gateway = await make_gateway(
        gateway_yaml(backend_yaml("shim", str(server.make_url("/v1")), models="[shim-model]"))
    )

    await _probed(gateway)
    assert (await _health(gateway))["state"] == "ready"
    response = await gateway.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert response.status == 200, await response.text()
    assert not [line for line in seen if line.endswith("/models")], seen
    assert "GET /v1" in seen  # reachability: any answer below 500 at the backend's URL


async def test_listed_models_use_the_liveness_path_for_readiness(
    make_gateway: Any, aiohttp_server: Any, auth: dict[str, str]
) -> None:
    seen: list[str] = []
    server = await aiohttp_server(_shim(seen))
    gateway = await make_gateway(
        gateway_yaml(
            backend_yaml(
                "shim",
                str(server.make_url("/v1")),
                models="[shim-model]",
                health="{liveness: /health}",
            )
        )
    )

    await _probed(gateway)
    assert (await _health(gateway))["state"] == "ready"
    assert seen and set(seen) == {"GET /health"}, seen
    response = await gateway.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert response.status == 200


async def test_a_backend_refusing_the_key_is_a_502_with_health_checks(
    make_gateway: Any, aiohttp_server: Any, auth: dict[str, str]
) -> None:
    seen: list[str] = []
    server = await aiohttp_server(_shim(seen, key="right-key"))
    gateway = await make_gateway(
        gateway_yaml(
            backend_yaml(
                "shim",
                str(server.make_url("/v1")),
                models="[shim-model]",
                api_key="wrong-key",
                health="{liveness: /health, interval_s: 60}",
            )
        )
    )

    await _probed(gateway)
    health = await _health(gateway)
    assert health["state"] == "misconfigured", health
    assert "401" in health["error"] and "credentials" in health["error"]
    response = await gateway.post("/v1/chat/completions", json=CHAT, headers=auth)
    body = await response.json()
    assert response.status == 502, body
    assert "Retry-After" not in response.headers
    assert "401" in body["error"]["message"]
    assert "wrong-key" not in await response.text()


async def test_a_transient_failure_stays_a_503_with_retry_after(
    make_gateway: Any, aiohttp_server: Any, auth: dict[str, str]
) -> None:
    async def failing(request: web.Request) -> web.Response:
        return web.json_response({"detail": "loading"}, status=503)

    app = web.Application()
    app.router.add_get("/health", failing)
    server = await aiohttp_server(app)
    gateway = await make_gateway(
        gateway_yaml(
            backend_yaml(
                "shim",
                str(server.make_url("/v1")),
                models="[shim-model]",
                health="{liveness: /health}",
            )
        )
    )

    await _probed(gateway)
    response = await gateway.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert response.status == 503
    assert int(response.headers["Retry-After"]) >= 1
