"""Hostile backends and clients on the plain OpenAI face, and the routing under it.

Through the app factory in front of real aiohttp fake backends on loopback. Each test is a
backend or a client that is broken on purpose, and a number that proves the gateway held:
the status and error envelope a client gets (never a 500 for its own bad input), the
models a backend's listing may add (bounded), a reply the gateway refuses to parse into
something far larger than its text, and the admission slots given back.
"""

from __future__ import annotations

import functools
import json
import random
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.routing.health import MAX_DISCOVERED
from sidecar.routing.upstream import MAX_REPLY_CONTAINERS
from sidecar.typedefs import REGISTRY

from .conftest import (
    TOKEN,
    assert_no_address,
    backend_yaml,
    error_of,
    eventually,
    gateway_yaml,
    status_of,
)

BEARER = {"Authorization": f"Bearer {TOKEN}"}
wait_for = functools.partial(eventually, attempts=500, poll_s=0.02)


def _backend(server: TestServer, **fields: str) -> str:
    """A backend ``b`` serving the model ``m`` for every JSON capability of this face."""
    fields.setdefault("class", "mock")
    fields.setdefault("capabilities", "[chat, completions, embeddings, rerank]")
    fields.setdefault("models", "[{id: m, capabilities: [chat, completions, embeddings, rerank]}]")
    fields.setdefault("health", "{readiness: false}")
    return backend_yaml("b", str(server.make_url("/v1")), **fields)


async def _replying(start_mock: Any, body: bytes) -> TestServer:
    """A backend answering every embeddings and rerank call with ``body`` as JSON."""

    async def reply(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/v1/embeddings", reply)
    app.router.add_post("/v1/rerank", reply)
    return await start_mock(app)


async def _slots_free(gateway: TestClient, capability: str, admitted: int) -> None:
    stats = await status_of(gateway, "b", capability)
    assert stats["in_flight"] == 0, stats
    assert stats["admitted"] == admitted, stats


# -- a client's wrong types, through an alias with caps ------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/embeddings", {"input": "x", "max_tokens": "lots"}, "max_tokens"),
        ("/v1/embeddings", {"input": "x", "max_completion_tokens": [1]}, "max_completion_tokens"),
        ("/v1/embeddings", {"input": "x", "temperature": "hot"}, "temperature"),
        ("/v1/embeddings", {"input": "x", "temperature": True}, "temperature"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "temperature": {}}, "temperature"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "max_tokens": "9"}, "max_tokens"),
    ],
)
async def test_a_capped_alias_answers_a_field_of_the_wrong_type_with_a_400(
    make_gateway: Any, start_mock: Any, path: str, body: dict[str, Any], param: str
) -> None:
    """Embeddings and rerank do not check sampling fields; an alias that caps them must
    not fail on them (it did: ``min("lots", 10)``, a 500 ``internal_error``)."""
    server = await _replying(start_mock, b'{"object": "list", "data": [], "results": []}')
    gateway = await make_gateway(
        gateway_yaml(
            _backend(server),
            aliases="capped: {backend: b, model: m, max_tokens_cap: 10, temperature_cap: 0.5}",
        )
    )
    response = await gateway.post(path, json={"model": "capped", **body}, headers=BEARER)
    message = await error_of(response, 400, code="invalid_request", param=param)
    assert param in message
    # The same request with a number is capped and goes through.
    good = {**body, param: 3}
    response = await gateway.post(path, json={"model": "capped", **good}, headers=BEARER)
    assert response.status == 200, await response.text()


# -- a backend's /models listing ------------------------------------------------------------


async def test_a_listing_of_more_models_than_are_routed_adds_only_usable_names_up_to_the_cap(
    make_gateway: Any, start_mock: Any
) -> None:
    """A backend listing thousands of models (or ids no request could name: empty, too
    long, control characters, repeats) adds at most ``MAX_DISCOVERED`` of them: every
    ``/v1/models`` answer and route lookup walks them on the event loop. Before, a 4 MiB
    listing added 220,000 models and each ``/v1/models`` held the loop for seconds."""
    bad = ["", " ", "x" * 257, "bell\x07", "line\nbreak"]
    ids = [*bad, "m0", "m0", *(f"m{i}" for i in range(MAX_DISCOVERED + 500))]
    listing = json.dumps({"object": "list", "data": [{"id": i} for i in ids]}).encode()

    async def models(request: web.Request) -> web.Response:
        return web.Response(body=listing, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/models", models)
    server = await start_mock(app)
    gateway = await make_gateway(
        gateway_yaml(backend_yaml("b", str(server.make_url("/v1")), **{"class": "mock"}))
    )
    backend = gateway.app[REGISTRY].current.backends["b"]
    await wait_for(lambda: backend.discovered is not None, "the listing to be discovered")
    assert backend.discovered == tuple(f"m{i}" for i in range(MAX_DISCOVERED))

    response = await gateway.get("/v1/models", headers=BEARER)
    assert response.status == 200
    listed = [entry["id"] for entry in (await response.json())["data"]]
    assert len(listed) == MAX_DISCOVERED
    assert not set(bad) & set(listed)
    text = json.dumps(listed)
    assert_no_address(text, server)


# -- a reply built to be far larger once parsed than as text ---------------------------------


@pytest.mark.parametrize("unit", [b"[]", b"{}"], ids=["lists", "objects"])
async def test_a_reply_of_millions_of_empty_containers_is_a_502_not_parsed(
    make_gateway: Any, start_mock: Any, unit: bytes
) -> None:
    """4 MiB of ``[],`` parses into 1.4 M lists (about 100 MB and a loop held for a
    second; 64 MiB of it was 1.7 GB and 10 s): refused before the parse, as a 502 in the
    OpenAI envelope, its slot given back. Before, it was parsed and relayed as a 200."""
    count = MAX_REPLY_CONTAINERS + 400_000
    body = b'{"object":"list","data":[' + b",".join([unit] * count) + b"]}"
    server = await _replying(start_mock, body)
    gateway = await make_gateway(gateway_yaml(_backend(server)))
    response = await gateway.post(
        "/v1/embeddings", json={"model": "m", "input": "x"}, headers=BEARER
    )
    message = await error_of(
        response, 502, error_type="api_error", code="upstream_reply_too_complex"
    )
    assert "'b'" in message
    assert_no_address(message, server)
    await _slots_free(gateway, "embeddings", admitted=1)


async def test_a_large_real_embeddings_reply_is_still_relayed_byte_for_byte(
    make_gateway: Any, start_mock: Any
) -> None:
    """The count is no smaller limit for real replies: 8 MiB of embeddings (about 600,000
    numbers in 400 arrays) passes as the backend sent it."""
    rng = random.Random(7)
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": [round(rng.uniform(-1, 1), 8) for _ in range(1536)],
        }
        for index in range(400)
    ]
    body = json.dumps(
        {
            "object": "list",
            "data": data,
            "model": "m",
            "usage": {"prompt_tokens": 5, "total_tokens": 5},
        }
    ).encode()
    assert len(body) > 7 * 1024 * 1024
    server = await _replying(start_mock, body)
    gateway = await make_gateway(gateway_yaml(_backend(server)))
    response = await gateway.post(
        "/v1/embeddings", json={"model": "m", "input": ["x"] * 400}, headers=BEARER
    )
    assert response.status == 200
    assert await response.read() == body
    await _slots_free(gateway, "embeddings", admitted=1)
