"""Images backends through the gateway: limits, failures, what each protocol is sent.

The fakes are real aiohttp servers on loopback; a held fake waits on an ``asyncio.Event``
so a test knows from the fake itself which requests are in flight before it sends the
next one. Nothing depends on how fast anything runs.
"""

from __future__ import annotations

import asyncio
import base64
import runpy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from sidecar.mock_backends.images import (
    A1111_MODEL,
    create_a1111_app,
    create_openai_images_app,
    make_png,
)

from .conftest import TOKEN, free_port, openai_client
from .test_images_api import (
    ImagesGateway,
    assert_error,
    backend_status,
    fetch,
    generate,
    images_gateway_fixture,  # noqa: F401 - the fixture, shared with test_images_api.py
    png_size,
    stored_files,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
SHIM_PATH = "/v1/images/generations"
A1111_PATH = "/sdapi/v1/txt2img"
NO_PROBES = {"health": "{readiness: false}"}


def encoded(*images: bytes) -> list[str]:
    return [base64.b64encode(image).decode() for image in images]


def images_reply(request: web.Request, images: list[str]) -> web.Response:
    """``images`` (base64) in the shape of whichever protocol was called."""
    if request.path == A1111_PATH:
        return web.json_response({"images": images, "parameters": {}, "info": "{}"})
    return web.json_response({"created": 0, "data": [{"b64_json": image} for image in images]})


async def requested_count(request: web.Request) -> int:
    body = await request.json()
    return int(body.get("batch_size", body.get("n", 1)))


def image_app(handler: Any) -> web.Application:
    """A fake serving ``handler`` for both protocols' generation routes, without probes."""
    app = web.Application()
    app.router.add_post(SHIM_PATH, handler)
    app.router.add_post(A1111_PATH, handler)
    return app


@pytest.fixture
async def release(aiohttp_server: Any) -> AsyncIterator[asyncio.Event]:
    """An event held fakes wait on; set at teardown, before their servers stop."""
    event = asyncio.Event()
    yield event
    event.set()


# -- 4. the images limit ---------------------------------------------------------------------


class HeldImages:
    """A fake A1111 and shim in one: each generation waits for ``release``, then answers
    with a PNG drawn from its prompt. Readiness routes answer at once."""

    def __init__(self, release: asyncio.Event) -> None:
        self.release = release
        self.arrived: list[str] = []
        self.app = image_app(self.generate)
        self.app.router.add_get("/readyz", self.ready)
        self.app.router.add_get("/sdapi/v1/sd-models", self.ready)

    async def ready(self, request: web.Request) -> web.Response:
        return web.json_response([A1111_MODEL] if "sdapi" in request.path else {"status": "ok"})

    async def generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.arrived.append(body["prompt"])
        await self.release.wait()
        return images_reply(request, encoded(make_png(64, 64, body["prompt"].encode())))


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("shim-env", {}),  # IMAGES_BACKEND shorthand: class gpu_heavy, images limit 2
        ("a1111-yaml", {"class": "mock", "limits": "{images: 2}"}),
    ],
)
async def test_third_concurrent_request_over_a_limit_of_2_is_429_and_writes_nothing(
    images_gateway: ImagesGateway,
    release: asyncio.Event,
    kind: str,
    fields: dict[str, str],
) -> None:
    held = HeldImages(release)
    setup = await images_gateway(kind, app=held.app, fields=fields)
    gateway = setup.gateway
    held_requests = [
        asyncio.create_task(generate(gateway, prompt=f"held {i}", size="64x64")) for i in range(2)
    ]
    await wait_for(lambda: len(held.arrived) == 2, "two generations at the backend")
    stats = (await backend_status(gateway, setup.backend))["capabilities"]["images"]
    assert (stats["limit"], stats["in_flight"]) == (2, 2), stats

    status, headers, body = await generate(gateway, prompt="rejected", size="64x64")
    assert_error(status, body, 429, code="backend_overloaded", error_type="rate_limit_error")
    assert int(headers["Retry-After"]) >= 1
    assert headers["X-Backend-Used"] == setup.backend
    assert stored_files(setup.image_dir) == []

    release.set()
    results = await asyncio.wait_for(asyncio.gather(*held_requests), timeout=30)
    names = set()
    for status, headers, body in results:
        assert status == 200, body
        assert headers["X-Backend-Used"] == setup.backend
        names.add(URL(body["data"][0]["url"]).name)
    assert len(names) == 2
    assert set(stored_files(setup.image_dir)) == names
    assert "rejected" not in held.arrived
    stats = (await backend_status(gateway, setup.backend))["capabilities"]["images"]
    assert (stats["in_flight"], stats["admitted"], stats["rejected"]) == (0, 2, 1), stats


# -- 5. backends that fail -------------------------------------------------------------------

PNG = make_png(64, 64, b"a real image")


async def _answers_500(request: web.Request) -> web.Response:
    return web.json_response({"error": {"message": "CUDA out of memory"}}, status=500)


async def _answers_html(request: web.Request) -> web.Response:
    return web.Response(text="<html>Bad Gateway</html>", content_type="application/json")


async def _answers_text_as_image(request: web.Request) -> web.Response:
    count = await requested_count(request)
    return images_reply(request, encoded(*[b"hello, I am not an image"] * count))


async def _answers_one_bad_image(request: web.Request) -> web.Response:
    await requested_count(request)
    return images_reply(request, encoded(PNG, b"MZ\x90\x00 an executable"))


async def _answers_bad_base64(request: web.Request) -> web.Response:
    await requested_count(request)
    return images_reply(request, ["!!not base64!!", "@@"])


async def _answers_too_few(request: web.Request) -> web.Response:
    await requested_count(request)
    return images_reply(request, encoded(PNG))


async def _answers_wrong_shape(request: web.Request) -> web.Response:
    return web.json_response({"result": "ok"})


FAILURES = {
    "500": _answers_500,
    "garbage": _answers_html,
    "not-an-image": _answers_text_as_image,
    "one-of-two-not-an-image": _answers_one_bad_image,
    "not-base64": _answers_bad_base64,
    "fewer-than-n": _answers_too_few,
    "wrong-shape": _answers_wrong_shape,
}


async def assert_failed_cleanly(
    setup: Any, status: int, headers: Any, body: Any, expected: int, code: str
) -> None:
    assert_error(status, body, expected, code=code, error_type="api_error")
    assert headers["X-Backend-Used"] == "pics"
    assert "127.0.0.1" not in body["error"]["message"]
    files = stored_files(setup.image_dir)
    assert files == [], files
    stats = (await backend_status(setup.gateway, "pics"))["capabilities"]["images"]
    assert (stats["in_flight"], stats["admitted"]) == (0, 1), stats


@pytest.mark.parametrize("protocol", ["a1111", "shim"])
@pytest.mark.parametrize("failure", list(FAILURES))
async def test_failing_backend_is_502_and_writes_nothing(
    images_gateway: ImagesGateway, protocol: str, failure: str
) -> None:
    setup = await images_gateway(
        f"{protocol}-yaml", app=image_app(FAILURES[failure]), fields=NO_PROBES
    )
    status, headers, body = await generate(setup.gateway, prompt="a boat", size="64x64", n=2)
    await assert_failed_cleanly(setup, status, headers, body, 502, "upstream_error")


@pytest.mark.parametrize("protocol", ["a1111", "shim"])
async def test_unreachable_backend_is_502_and_writes_nothing(
    images_gateway: ImagesGateway, protocol: str
) -> None:
    setup = await images_gateway(
        f"{protocol}-yaml", url=f"http://127.0.0.1:{free_port()}", fields=NO_PROBES
    )
    status, headers, body = await generate(setup.gateway, prompt="a boat", size="64x64")
    await assert_failed_cleanly(setup, status, headers, body, 502, "upstream_unavailable")


@pytest.mark.parametrize("protocol", ["a1111", "shim"])
async def test_backend_that_never_answers_is_504_and_writes_nothing(
    images_gateway: ImagesGateway, release: asyncio.Event, protocol: str
) -> None:
    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return images_reply(request, encoded(PNG))

    setup = await images_gateway(
        f"{protocol}-yaml",
        app=image_app(hang),
        fields={**NO_PROBES, "timeouts": "{read_s: 0.3}"},
    )
    status, headers, body = await generate(setup.gateway, prompt="a boat", size="64x64")
    await assert_failed_cleanly(setup, status, headers, body, 504, "upstream_timeout")


# -- 6. which model the shim is asked for ----------------------------------------------------


@pytest.mark.parametrize(
    ("request_model", "configured", "expected"),
    [
        ("dall-e-3", None, "dall-e-3"),  # unknown to the gateway: passed on as is
        ("dall-e-3", "sdxl-turbo", "dall-e-3"),
        (None, "sdxl-turbo", "sdxl-turbo"),  # IMAGES_OPENAI_MODEL
        (None, None, None),  # omitted: the shim uses its default
    ],
)
async def test_shim_is_sent_the_request_model_else_the_configured_one(
    images_gateway: ImagesGateway,
    request_model: str | None,
    configured: str | None,
    expected: str | None,
) -> None:
    setup = await images_gateway("shim-env", images={"openai_model": configured})
    async with openai_client(setup.gateway) as client:
        extra = {"model": request_model} if request_model else {}
        result = await client.images.generate(
            prompt="a tram", size="64x64", response_format="b64_json", **extra
        )
    assert result.data is not None and len(result.data) == 1
    received = setup.images_received()[-1]
    assert received.get("model") == expected
    assert ("model" in received) == (expected is not None)


@pytest.mark.parametrize(
    ("request_model", "expected"),
    [("pics-turbo", "sdxl-turbo"), ("pics/flux-dev", "flux-dev")],
    ids=["alias", "backend-prefix"],
)
async def test_shim_is_sent_the_upstream_model_of_an_alias_or_prefix(
    images_gateway: ImagesGateway, request_model: str, expected: str
) -> None:
    setup = await images_gateway(
        "shim-yaml", aliases="pics-turbo: {backend: pics, model: sdxl-turbo}"
    )
    status, headers, body = await generate(
        setup.gateway,
        prompt="a tram",
        size="64x64",
        model=request_model,
        response_format="b64_json",
    )
    assert status == 200, body
    assert headers["X-Backend-Used"] == "pics"
    assert setup.images_received()[-1].get("model") == expected


async def test_shim_is_sent_the_knobs_it_understands(images_gateway: ImagesGateway) -> None:
    setup = await images_gateway("shim-env")
    status, _, body = await generate(
        setup.gateway,
        prompt="a harbour",
        size="128x64",
        n=2,
        seed=7,
        steps=12,
        cfg_scale=6.5,
        negative_prompt="fog",
        sampler="euler",
    )
    assert status == 200, body
    received = setup.images_received()[-1]
    assert received == {
        "prompt": "a harbour",
        "n": 2,
        "size": "128x64",
        "response_format": "b64_json",  # the gateway stores and signs URLs itself
        "seed": 7,
        "steps": 12,
        "cfg_scale": 6.5,
        "negative_prompt": "fog",
        "scheduler": "euler",
    }


# -- 7. Automatic1111 mapping and Basic auth -------------------------------------------------


async def test_a1111_is_sent_the_mapped_txt2img_request(images_gateway: ImagesGateway) -> None:
    setup = await images_gateway("a1111-env")
    async with openai_client(setup.gateway) as client:
        result = await client.images.generate(
            prompt="a castle on a hill",
            size="512x384",  # type: ignore[arg-type]
            n=2,
            response_format="b64_json",
            extra_body={
                "sampler": "DPM++ 2M",
                "cfg_scale": 6.5,
                "steps": 12,
                "seed": 1234,
                "negative_prompt": "blurry",
            },
        )
    assert result.data is not None
    images = [base64.b64decode(item.b64_json or "") for item in result.data]
    assert [png_size(image) for image in images] == [(512, 384)] * 2
    received = setup.a1111_received()[-1]
    assert received["prompt"] == "a castle on a hill"
    assert (received["width"], received["height"]) == (512, 384)
    assert received["batch_size"] == 2
    assert received["sampler_name"] == "DPM++ 2M"
    assert received["cfg_scale"] == 6.5
    assert received["steps"] == 12
    assert received["seed"] == 1234
    assert received["negative_prompt"] == "blurry"
    assert received.get("n_iter", 1) == 1


async def test_a1111_with_basic_auth(images_gateway: ImagesGateway) -> None:
    setup = await images_gateway(
        "a1111-env", app=create_a1111_app(auth=("u", "p")), images={"a1111_auth": "u:p"}
    )
    status, headers, body = await generate(setup.gateway, prompt="a bridge", size="64x64")
    assert status == 200, body
    assert headers["X-Backend-Used"] == "images"
    assert setup.a1111_received()[-1]["prompt"] == "a bridge"
    status, _, data = await fetch(body["data"][0]["url"])
    assert status == 200 and png_size(data) == (64, 64)


async def test_a1111_with_the_wrong_password_is_502(images_gateway: ImagesGateway) -> None:
    setup = await images_gateway(
        "a1111-yaml",
        app=create_a1111_app(auth=("u", "p")),
        fields={**NO_PROBES, "basic_auth": "u:wrong"},
    )
    status, headers, body = await generate(setup.gateway, prompt="a bridge", size="64x64")
    await assert_failed_cleanly(setup, status, headers, body, 502, "upstream_error")
    assert setup.a1111_received() == []


async def test_a1111_with_the_wrong_password_is_misconfigured(
    images_gateway: ImagesGateway,
) -> None:
    """Refused credentials are no passing trouble: a 502 that says so, no Retry-After."""
    setup = await images_gateway(
        "a1111-env", app=create_a1111_app(auth=("u", "p")), images={"a1111_auth": "u:wrong"}
    )

    async def misconfigured() -> bool:
        entry = await backend_status(setup.gateway, "images")
        return entry["health"]["state"] == "misconfigured"

    await wait_for(misconfigured, "the readiness probe to see the 401")
    status, headers, body = await generate(setup.gateway, prompt="a bridge", size="64x64")
    assert_error(status, body, 502, code="upstream_error")
    assert "401" in body["error"]["message"]
    assert "Retry-After" not in headers
    assert headers["X-Backend-Used"] == "images"
    assert stored_files(setup.image_dir) == []


# -- 9. the MIME type comes from the bytes ---------------------------------------------------

SCRIPTED_SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


@pytest.mark.parametrize(
    ("image", "extension", "mime"),
    [
        (b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(200), "jpg", "image/jpeg"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(200), "webp", "image/webp"),
        (SCRIPTED_SVG, "svg", "image/svg+xml"),
    ],
    ids=["jpeg", "webp", "svg"],
)
async def test_shim_image_type_is_detected_from_its_bytes(
    images_gateway: ImagesGateway, image: bytes, extension: str, mime: str
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return images_reply(request, encoded(image))

    setup = await images_gateway("shim-yaml", app=image_app(answer), fields=NO_PROBES)
    status, _, body = await generate(setup.gateway, prompt="whatever", size="64x64")
    assert status == 200, body
    url = URL(body["data"][0]["url"])
    assert url.name.endswith(f".{extension}")
    assert stored_files(setup.image_dir) == [url.name]
    status, headers, data = await fetch(url)
    assert status == 200
    assert data == image
    assert headers["Content-Type"] == mime
    assert headers["X-Content-Type-Options"] == "nosniff"
    if extension == "svg":
        assert "sandbox" in headers["Content-Security-Policy"]


# -- 12. tools/verify_images.py --------------------------------------------------------------


async def test_verify_images_tool_passes_against_the_gateway_and_fakes(
    images_gateway: ImagesGateway, aiohttp_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = await images_gateway("a1111-env")
    shim = await aiohttp_server(create_openai_images_app())
    verify_main = runpy.run_path(str(ROOT / "tools/verify_images.py"))["main"]
    argv = [
        "--gateway-base-url",
        str(setup.gateway.make_url("/")).rstrip("/"),
        "--token",
        TOKEN,
        "--also-check-a1111",
        str(setup.fake.make_url("/")) if setup.fake is not None else "",
        "--also-check-openai-images",
        str(shim.make_url("/")),
        "--timeout",
        "20",
    ]
    exit_status = await asyncio.to_thread(verify_main, argv)
    lines = capsys.readouterr().out.splitlines()
    assert exit_status == 0, lines
    for check in ("gateway-b64-json", "gateway-url", "gateway-bad-request", "a1111-txt2img"):
        assert f"PASS {check}" in lines, lines
    assert lines[-1] == "7 passed, 0 failed"
    # Two generations went through the gateway to A1111 (b64_json, url), one came direct.
    sizes = [(body["width"], body["height"]) for body in setup.a1111_received()]
    assert sizes == [(256, 256), (256, 256), (64, 64)]
    assert len(stored_files(setup.image_dir)) == 1
