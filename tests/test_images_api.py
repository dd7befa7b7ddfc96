"""Images through the gateway: the SDK per backend, signed URLs, storage and validation.

Every gateway here comes from the app factory and every image backend is a real aiohttp
server on loopback (the fakes from ``sidecar.mock_backends.images``), so the gateway's
HTTP client, storage and URL signing all run for real. Helpers shared with
``test_images_backends.py`` live at the top of this module.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import json
import os
import struct
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict
from yarl import URL

from sidecar.images.store import ImageStore
from sidecar.mock_backends.images import (
    A1111_RECEIVED,
    IMAGES_RECEIVED,
    create_a1111_app,
    create_openai_images_app,
)
from sidecar.settings import ImagesSettings
from sidecar.typedefs import IMAGE_STORE, KEYS, URL_SIGNER

from .conftest import (
    TOKEN,
    backend_yaml,
    eventually,
    gateway_yaml,
    mock_backend_yaml,
    openai_client,
)

IMAGES_PATH = "/v1/images/generations"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE_NAME = r"[0-9a-f]{64}\.(png|jpg|webp|svg)"
ENV_PROTOCOLS = {"mock": "mock", "a1111": "http_a1111", "shim": "http_openai_images"}
YAML_PROTOCOLS = {"mock": "mock_images", "a1111": "a1111", "shim": "openai_images"}
POLL_ROUNDS = 1000  # x 10 ms: a bound for conditions that should hold almost at once


# -- shared helpers (also used by test_images_backends.py) ----------------------------------


@dataclass(frozen=True)
class ImagesSetup:
    """A gateway, the name of its images backend, and the fake behind it (None for mock)."""

    gateway: TestClient
    backend: str
    fake: TestServer | None

    @property
    def image_dir(self) -> Path:
        return self.gateway.server.app[IMAGE_STORE].directory

    def a1111_received(self) -> list[dict[str, Any]]:
        assert self.fake is not None
        return list(self.fake.app[A1111_RECEIVED])

    def images_received(self) -> list[dict[str, Any]]:
        assert self.fake is not None
        return list(self.fake.app[IMAGES_RECEIVED])


ImagesGateway = Callable[..., Awaitable[ImagesSetup]]


@pytest.fixture(name="images_gateway")
async def images_gateway_fixture(
    make_gateway: Any, start_mock: Any, aiohttp_server: Any
) -> ImagesGateway:
    """Start a gateway whose images backend is ``kind``: ``mock|a1111|shim`` + ``-env|-yaml``.

    ``-env`` uses the ``IMAGES_*`` shorthand (``ImagesSettings``) next to a chat backend
    ``llm`` serving ``mock-llama``; ``-yaml`` declares the backend in ``gateway.yaml``
    (named ``pics``, plus ``fields`` as YAML text). ``app`` replaces the default fake;
    ``url`` points the backend somewhere else (e.g. a closed port).
    """

    async def start(
        kind: str,
        *,
        app: web.Application | None = None,
        url: str | None = None,
        fields: dict[str, str] | None = None,
        aliases: str = "",
        images: dict[str, Any] | None = None,
        **settings: Any,
    ) -> ImagesSetup:
        protocol, form = kind.split("-")
        fake = None
        if protocol != "mock":
            default_app = create_a1111_app() if protocol == "a1111" else create_openai_images_app()
            fake = await aiohttp_server(app or default_app)
            url = url or str(fake.make_url("/"))
        if form == "env":
            chat = await start_mock()
            text = gateway_yaml(mock_backend_yaml("llm", chat), aliases=aliases)
            settings["images"] = ImagesSettings(
                backend=ENV_PROTOCOLS[protocol], http_base_url=url, **(images or {})
            )
            name = "images"
        else:
            entry = {"protocol": YAML_PROTOCOLS[protocol], **(fields or {})}
            if protocol == "mock":
                entry_text = "\n".join(["  pics:", *(f"    {k}: {v}" for k, v in entry.items())])
            else:
                assert url is not None
                entry_text = backend_yaml("pics", url, **entry)
            text = gateway_yaml(entry_text, aliases=aliases)
            name = "pics"
        gateway = await make_gateway(text, **settings)
        return ImagesSetup(gateway, name, fake)

    return start


async def generate(
    gateway: TestClient, token: str | None = TOKEN, **body: Any
) -> tuple[int, CIMultiDict[str], Any]:
    """POST an images request with raw JSON; status, headers and parsed body."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with gateway.post(IMAGES_PATH, json=body, headers=headers) as response:
        return response.status, CIMultiDict(response.headers), await response.json()


async def fetch(
    url: str | URL, headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    """GET an absolute URL with a plain aiohttp client: no bearer token unless given."""
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, CIMultiDict(response.headers), await response.read()


def stored_files(directory: Path) -> list[str]:
    """Every entry in the image directory (temp files included); [] when it is absent."""
    return sorted(os.listdir(directory)) if directory.exists() else []


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, data[:16]
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def assert_error(
    status: int,
    body: Any,
    expected_status: int,
    *,
    code: str | None,
    error_type: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """The OpenAI error envelope with the expected status, code and param."""
    assert status == expected_status, body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == code, error
    assert error["param"] == param, error
    if error_type is not None:
        assert error["type"] == error_type, error
    assert isinstance(error["message"], str) and error["message"]
    return error


wait_for = functools.partial(eventually, attempts=POLL_ROUNDS, poll_s=0.01)


async def backend_status(gateway: TestClient, name: str) -> dict[str, Any]:
    """One backend's entry in ``/v1/gateway/status``."""
    async with gateway.get(
        "/v1/gateway/status", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as response:
        assert response.status == 200
        body = await response.json()
    return next(entry for entry in body["backends"] if entry["name"] == name)


def image_name(url: str) -> str:
    """The stored file name an image URL points at."""
    return URL(url).name


# -- 1. the SDK through every backend, both response formats --------------------------------

BACKEND_KINDS = ["mock-env", "mock-yaml", "a1111-env", "a1111-yaml", "shim-env", "shim-yaml"]


@pytest.mark.parametrize("kind", BACKEND_KINDS)
async def test_sdk_b64_json_decodes_to_an_image_of_the_requested_size(
    images_gateway: ImagesGateway, kind: str
) -> None:
    setup = await images_gateway(kind)
    async with openai_client(setup.gateway) as client:
        raw = await client.images.with_raw_response.generate(
            prompt="a lighthouse at dusk", size="256x192", n=2, response_format="b64_json"
        )
    assert raw.headers["X-Backend-Used"] == setup.backend
    result = raw.parse()
    assert isinstance(result.created, int)
    assert result.data is not None and len(result.data) == 2
    images = [base64.b64decode(item.b64_json or "", validate=True) for item in result.data]
    assert all(item.url is None for item in result.data)
    assert images[0] != images[1]
    for image in images:
        if kind.startswith("mock"):
            assert image.startswith(b"<svg")
            root = ET.fromstring(image)  # noqa: S314 - the gateway's own placeholder
            assert (root.get("width"), root.get("height")) == ("256", "192")
        else:
            assert png_size(image) == (256, 192)
    assert stored_files(setup.image_dir) == []


@pytest.mark.parametrize("kind", BACKEND_KINDS)
async def test_sdk_url_is_absolute_signed_and_fetchable_without_the_token(
    images_gateway: ImagesGateway, kind: str
) -> None:
    setup = await images_gateway(kind)
    async with openai_client(setup.gateway) as client:
        raw = await client.images.with_raw_response.generate(
            prompt="a red fox in snow", size="128x128", response_format="url"
        )
    assert raw.headers["X-Backend-Used"] == setup.backend
    result = raw.parse()
    assert result.data is not None and len(result.data) == 1
    url = URL(result.data[0].url or "")
    assert result.data[0].b64_json is None
    assert url.is_absolute() and url.scheme == "http"
    assert (url.host, url.port) == ("127.0.0.1", setup.gateway.port)
    assert url.path.startswith("/images/")
    assert set(url.query) == {"expires", "signature"}

    status, headers, body = await fetch(url)  # no Authorization header at all
    assert status == 200, body
    assert headers["X-Content-Type-Options"] == "nosniff"
    name = url.name
    if kind.startswith("mock"):
        assert body.startswith(b"<svg")
        assert headers["Content-Type"] == "image/svg+xml"
        assert "sandbox" in headers["Content-Security-Policy"]
        assert name.endswith(".svg")
    else:
        assert png_size(body) == (128, 128)
        assert headers["Content-Type"] == "image/png"
        assert name.endswith(".png")
    assert name == f"{hashlib.sha256(body).hexdigest()}.{name.rsplit('.', 1)[1]}"
    assert stored_files(setup.image_dir) == [name]
    assert (setup.image_dir / name).read_bytes() == body


async def test_sdk_sees_out_of_range_n_as_bad_request(images_gateway: ImagesGateway) -> None:
    setup = await images_gateway("mock-env")
    async with openai_client(setup.gateway) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.images.generate(prompt="too many", n=11)
    assert caught.value.status_code == 400
    assert caught.value.param == "n"


# -- 2. signed URLs --------------------------------------------------------------------------


async def two_images(setup: ImagesSetup) -> tuple[URL, URL]:
    urls = []
    for prompt in ("first picture", "second picture"):
        status, _, body = await generate(setup.gateway, prompt=prompt, size="64x64")
        assert status == 200, body
        urls.append(URL(body["data"][0]["url"]))
    return urls[0], urls[1]


async def test_signed_url_is_valid_and_tampering_is_refused(
    images_gateway: ImagesGateway,
) -> None:
    setup = await images_gateway("mock-env")
    first, second = await two_images(setup)
    status, _, body = await fetch(first)
    assert status == 200 and body.startswith(b"<svg")

    signature = first.query["signature"]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    other_path_same_signature = second.with_query(first.query)
    extended = first.update_query(expires=str(int(first.query["expires"]) + 86400))
    for tampered in (
        first.update_query(signature=flipped),
        first.update_query(signature=""),
        other_path_same_signature,
        extended,
        first.update_query(expires="soon"),
        first.with_query({"signature": signature}),  # expiry dropped
    ):
        status, headers, raw = await fetch(tampered)
        assert_error(
            status,
            json.loads(raw),
            403,
            code="invalid_signature",
            error_type="permission_error",
        )
        assert not headers["Content-Type"].startswith("image/")


async def test_expired_signature_is_refused(images_gateway: ImagesGateway) -> None:
    setup = await images_gateway("mock-env")
    first, _ = await two_images(setup)
    signer = setup.gateway.server.app[URL_SIGNER]
    expired = signer.sign(first.path, now=time.time() - 7200)
    assert int(expired["expires"]) < time.time()
    status, _, raw = await fetch(first.with_query(expired))
    assert_error(status, json.loads(raw), 403, code="invalid_signature")

    fresh = signer.sign(first.path)
    status, _, body = await fetch(first.with_query(fresh))
    assert status == 200 and body.startswith(b"<svg")


async def test_unsigned_url_needs_a_valid_bearer_token(images_gateway: ImagesGateway) -> None:
    setup = await images_gateway("mock-env")
    first, _ = await two_images(setup)
    bare = first.with_query(None)

    status, _, raw = await fetch(bare)
    assert_error(status, json.loads(raw), 403, code="unsigned", error_type="permission_error")

    status, headers, raw = await fetch(bare, {"Authorization": "Bearer wrong-token-0123456789"})
    assert_error(status, json.loads(raw), 401, code="invalid_api_key")

    status, headers, body = await fetch(bare, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    assert headers["Content-Type"] == "image/svg+xml"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert (setup.image_dir / first.name).read_bytes() == body


async def test_an_unsigned_image_needs_a_key_allowed_the_images_endpoint(
    images_gateway: ImagesGateway,
) -> None:
    """A key limited to chat cannot read generated images by its token; one allowed
    ``images`` (or not limited to endpoints) can."""
    setup = await images_gateway("mock-env")
    first, _ = await two_images(setup)
    bare = first.with_query(None)
    keys = setup.gateway.server.app[KEYS]
    _, chat_only = await keys.create("chat-only", {"endpoints": ["chat"]})
    _, painter = await keys.create("painter", {"endpoints": ["chat", "images"]})
    _, anything = await keys.create("anything", {})

    status, headers, raw = await fetch(bare, {"Authorization": f"Bearer {chat_only}"})
    assert_error(status, json.loads(raw), 403, code="endpoint_not_allowed")
    assert not headers["Content-Type"].startswith("image/")
    for secret in (painter, anything):
        status, _, body = await fetch(bare, {"Authorization": f"Bearer {secret}"})
        assert status == 200 and (setup.image_dir / first.name).read_bytes() == body


@pytest.mark.parametrize(
    "raw_name",
    [
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "..%2Fplanted.svg",
        "%2e%2e%2Fplanted.svg",
        "..%5Cplanted.svg",
        "not-a-hash.svg",
        "notes.txt",
        "g" * 64 + ".svg",
        "0" * 64 + ".html",
        "0" * 64 + ".svg",  # well formed, but no such image
    ],
)
async def test_bogus_image_names_never_reach_a_file(
    images_gateway: ImagesGateway, raw_name: str
) -> None:
    setup = await images_gateway("mock-env")
    await two_images(setup)
    # Files a traversal would want: one beside the store, one inside under a bad name.
    secret = b"<svg>planted outside the store</svg>"
    (setup.image_dir.parent / "planted.svg").write_bytes(secret)
    (setup.image_dir / "notes.txt").write_bytes(secret)
    url = URL(str(setup.gateway.make_url("/images/")) + raw_name, encoded=True)
    bearer = {"Authorization": f"Bearer {TOKEN}"}

    status, _, raw = await fetch(url, bearer)
    assert status == 404, raw
    assert secret not in raw and b"root:" not in raw
    assert_error(status, json.loads(raw), 404, code="image_not_found")

    # Even a valid signature for the decoded path (as if the key leaked) opens nothing.
    decoded_path = "/images/" + URL.build(path=raw_name, encoded=True).path
    signed = url.with_query(setup.gateway.server.app[URL_SIGNER].sign(decoded_path))
    status, _, raw = await fetch(signed)
    assert status in (403, 404), raw
    assert secret not in raw and b"root:" not in raw

    status, _, raw = await fetch(url)  # neither signature nor token
    assert status in (403, 404), raw
    assert secret not in raw


# -- 3. storage ------------------------------------------------------------------------------


async def test_same_image_is_stored_once_under_its_hash(images_gateway: ImagesGateway) -> None:
    setup = await images_gateway("mock-env")
    names = []
    for _ in range(2):
        status, _, body = await generate(setup.gateway, prompt="same every time", size="96x64")
        assert status == 200, body
        names.append(image_name(body["data"][0]["url"]))
    assert names[0] == names[1]
    files = stored_files(setup.image_dir)
    assert files == [names[0]]
    data = (setup.image_dir / names[0]).read_bytes()
    assert names[0] == f"{hashlib.sha256(data).hexdigest()}.svg"

    status, _, body = await generate(setup.gateway, prompt="a batch", size="96x64", n=3)
    assert status == 200, body
    batch = [image_name(item["url"]) for item in body["data"]]
    assert len(set(batch)) == 3
    files = stored_files(setup.image_dir)
    assert sorted(files) == sorted({names[0], *batch})
    assert not [name for name in files if name.startswith(".incoming-")]
    for name in files:
        data = (setup.image_dir / name).read_bytes()
        assert name == f"{hashlib.sha256(data).hexdigest()}.svg"


@pytest.mark.parametrize("kind", ["mock-env", "shim-env"])
async def test_b64_json_writes_nothing(images_gateway: ImagesGateway, kind: str) -> None:
    setup = await images_gateway(kind)
    status, _, body = await generate(
        setup.gateway, prompt="keep it in memory", size="64x64", n=2, response_format="b64_json"
    )
    assert status == 200, body
    assert [set(item) for item in body["data"]] == [{"b64_json"}, {"b64_json"}]
    assert stored_files(setup.image_dir) == []


# -- 6. validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"n": 0}, "n"),
        ({"n": 11}, "n"),
        ({"n": -1}, "n"),
        ({"n": "2"}, "n"),
        ({"n": 2.0}, "n"),
        ({"n": True}, "n"),
        ({"size": "abc"}, "size"),
        ({"size": "10x10"}, "size"),
        ({"size": "5000x5000"}, "size"),
        ({"size": "512x"}, "size"),
        ({"size": 512}, "size"),
        ({"size": "1024x1024"}, "size"),  # over this backend's max_pixels
        ({"response_format": "png"}, "response_format"),
        ({"steps": 0}, "steps"),
        ({"steps": 151}, "steps"),
        ({"seed": "x"}, "seed"),
        ({"cfg_scale": "high"}, "cfg_scale"),
        ({"negative_prompt": ["a"]}, "negative_prompt"),
    ],
)
async def test_invalid_request_is_400_and_never_reaches_the_backend(
    images_gateway: ImagesGateway, fields: dict[str, Any], param: str
) -> None:
    setup = await images_gateway("shim-env", images={"max_pixels": 512 * 512})
    body = {"prompt": "a valid prompt", "size": "512x512", **fields}
    if body["prompt"] is None:
        del body["prompt"]
    status, _, reply = await generate(setup.gateway, **body)
    code = "missing_required_parameter" if "prompt" not in body else "invalid_request"
    assert_error(status, reply, 400, code=code, error_type="invalid_request_error", param=param)
    assert setup.images_received() == []
    assert stored_files(setup.image_dir) == []
    stats = (await backend_status(setup.gateway, "images"))["capabilities"]["images"]
    assert stats["in_flight"] == 0


async def test_size_at_max_pixels_is_accepted(images_gateway: ImagesGateway) -> None:
    setup = await images_gateway("shim-env", images={"max_pixels": 512 * 512})
    status, _, body = await generate(
        setup.gateway, prompt="just fits", size="512x512", response_format="b64_json"
    )
    assert status == 200, body
    assert png_size(base64.b64decode(body["data"][0]["b64_json"])) == (512, 512)


async def test_a1111_needs_sizes_in_multiples_of_8(images_gateway: ImagesGateway) -> None:
    setup = await images_gateway("a1111-env")
    status, headers, body = await generate(setup.gateway, prompt="odd", size="100x100")
    assert_error(status, body, 400, code="invalid_request", param="size")
    assert headers["X-Backend-Used"] == "images"
    assert setup.a1111_received() == []
    assert stored_files(setup.image_dir) == []
    stats = (await backend_status(setup.gateway, "images"))["capabilities"]["images"]
    assert stats["in_flight"] == 0


async def test_chat_model_is_refused_for_images(images_gateway: ImagesGateway) -> None:
    setup = await images_gateway("mock-env")
    status, _, body = await generate(setup.gateway, prompt="a cat", model="mock-llama")
    assert_error(status, body, 400, code="capability_not_supported", param="model")
    assert stored_files(setup.image_dir) == []


async def test_unknown_model_is_served_by_the_default_images_backend(
    images_gateway: ImagesGateway,
) -> None:
    setup = await images_gateway("mock-env")
    status, headers, body = await generate(
        setup.gateway, prompt="a cat", model="dall-e-3", response_format="b64_json"
    )
    assert status == 200, body
    assert headers["X-Backend-Used"] == "images"
    assert base64.b64decode(body["data"][0]["b64_json"]).startswith(b"<svg")


# -- 8. a prompt that tries to script the page -----------------------------------------------

SCRIPT_PROMPT = '<script>alert("owned")</script> <img src=x onerror=alert(1)> & more'


def assert_inert_svg(data: bytes) -> None:
    assert b"&lt;script&gt;" in data
    assert b"<script" not in data.lower()
    assert b"<img" not in data.lower()
    root = ET.fromstring(data)  # noqa: S314 - the gateway's own placeholder
    for element in root.iter():
        assert not element.tag.lower().endswith(("script", "foreignobject")), element.tag
        assert not [name for name in element.attrib if name.lower().startswith("on")]
    assert 'alert("owned")' in "".join(root.itertext())


async def test_script_in_the_prompt_yields_an_svg_that_cannot_run_it(
    images_gateway: ImagesGateway,
) -> None:
    setup = await images_gateway("mock-env")
    status, _, body = await generate(setup.gateway, prompt=SCRIPT_PROMPT, size="512x256")
    assert status == 200, body
    status, headers, data = await fetch(body["data"][0]["url"])
    assert status == 200
    assert headers["Content-Type"] == "image/svg+xml"
    assert headers["X-Content-Type-Options"] == "nosniff"
    policy = headers["Content-Security-Policy"]
    assert "sandbox" in [part.strip().split(" ")[0] for part in policy.split(";")]
    assert_inert_svg(data)

    status, _, body = await generate(
        setup.gateway, prompt=SCRIPT_PROMPT, size="512x256", response_format="b64_json"
    )
    assert status == 200, body
    assert_inert_svg(base64.b64decode(body["data"][0]["b64_json"]))


# -- 10. the absolute URL's base -------------------------------------------------------------


async def test_public_base_url_is_used_for_image_urls(images_gateway: ImagesGateway) -> None:
    setup = await images_gateway("mock-env", public_base_url="https://gw.example.lan")
    status, _, body = await generate(
        setup.gateway,
        prompt="behind the front door",
        size="64x64",
    )
    assert status == 200, body
    url = URL(body["data"][0]["url"])
    assert (url.scheme, url.host, url.explicit_port) == ("https", "gw.example.lan", None)
    # The same path and query are valid on the gateway itself.
    status, headers, _ = await fetch(setup.gateway.make_url(url.path).with_query(url.query))
    assert status == 200
    assert headers["Content-Type"] == "image/svg+xml"


FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "ai.home.lan:8443"}


async def url_with_forwarded_headers(setup: ImagesSetup) -> URL:
    async with setup.gateway.post(
        IMAGES_PATH,
        json={"prompt": "forwarded", "size": "64x64"},
        headers={"Authorization": f"Bearer {TOKEN}", **FORWARDED},
    ) as response:
        body = await response.json()
        assert response.status == 200, body
    return URL(body["data"][0]["url"])


async def test_forwarded_scheme_and_host_are_used_from_a_trusted_proxy(
    images_gateway: ImagesGateway,
) -> None:
    setup = await images_gateway("mock-env", trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    url = await url_with_forwarded_headers(setup)
    assert (url.scheme, url.host, url.port) == ("https", "ai.home.lan", 8443)
    assert url.path.startswith("/images/")


async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(
    images_gateway: ImagesGateway,
) -> None:
    setup = await images_gateway("mock-env")
    url = await url_with_forwarded_headers(setup)
    assert (url.scheme, url.host, url.port) == ("http", "127.0.0.1", setup.gateway.port)
    status, _, body = await fetch(url)
    assert status == 200 and body.startswith(b"<svg")


# -- 11. retention ---------------------------------------------------------------------------


def test_prune_removes_only_images_and_temp_files_past_their_age(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    old = store.save(b"<svg>old</svg>", "svg")
    new = store.save(PNG_SIGNATURE + b"new", "png")
    directory = store.directory
    stale_temp = directory / ".incoming-abc.tmp"
    stale_temp.write_bytes(b"half")
    unrelated = directory / "README.txt"
    unrelated.write_bytes(b"not ours")
    now = time.time()
    for path, age in ((old, 7200), (new, 60), (stale_temp.name, 7200), (unrelated.name, 7200)):
        os.utime(directory / path, (now - age, now - age))

    assert store.prune(3600, now=now) == 2
    assert stored_files(directory) == sorted([new, "README.txt"])
    assert store.prune(3600, now=now) == 0
    assert ImageStore(tmp_path / "absent").prune(3600, now=now) == 0

    # Saving an image again makes it young again.
    store.save(PNG_SIGNATURE + b"new", "png")
    assert store.prune(3600, now=time.time()) == 0
    assert (directory / new).exists()
