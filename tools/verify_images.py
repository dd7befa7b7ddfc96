#!/usr/bin/env python3
"""Check a running gateway's image generation from the outside, as an operator would.

Standard library only (with its sibling ``gatewayclient.py``), so it runs on any host with
Python 3.11, without the project's virtualenv. Against the gateway it checks that a
``b64_json`` generation decodes to an image, that a ``url`` generation gives an absolute
URL anyone holding it can fetch (without the bearer token) with an image Content-Type and
``X-Content-Type-Options: nosniff``, and that a bad request (``n=0``) gets 400 with an
OpenAI error envelope.
Optionally it also talks directly to an Automatic1111 server and to an OpenAI-style
image shim, to tell a broken backend from a broken gateway.

    GATEWAY_BEARER_TOKEN=... python3 tools/verify_images.py \\
        --gateway-base-url https://127.0.0.1:8443 --cafile var/caddy/pki/.../root.crt \\
        [--also-check-a1111 http://127.0.0.1:7860] \\
        [--also-check-openai-images http://127.0.0.1:9090]

Prints ``PASS name`` or ``FAIL name: reason`` per check and ``N passed, M failed``;
exits 0 when every check passed, 1 when one failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import base64
import os
import ssl
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path, not run
    sys.path.append(str(Path(__file__).resolve().parent))
from gatewayclient import (
    CheckFailed,
    Http,
    Reply,
    decode_image,
    http_url,
    image_kind,
    seconds,
    tls_context,
)

PROMPT = "verify_images: a small test pattern"
USER_AGENT = "local-ai-gateway-verify-images/1"


class Gateway:
    """The gateway's ``/v1/images/generations``, with the operator's bearer token."""

    def __init__(self, http: Http, base_url: str, token: str, model: str | None, size: str) -> None:
        self.http = http
        self.url = base_url.rstrip("/") + "/v1/images/generations"
        self.token = token
        self.model = model
        self.size = size

    def generate(self, **fields: Any) -> Reply:
        payload: dict[str, Any] = {"prompt": PROMPT, "n": 1, "size": self.size, **fields}
        if self.model:
            payload.setdefault("model", self.model)
        headers = {"Authorization": f"Bearer {self.token}"}
        return self.http.send("POST", self.url, payload=payload, headers=headers)

    def check_b64_json(self) -> None:
        reply = self.generate(response_format="b64_json")
        reply.expect(200, "b64_json generation")
        decode_image(reply.first_item("b64_json")["b64_json"], "b64_json")

    def check_url(self) -> None:
        reply = self.generate(response_format="url")
        reply.expect(200, "url generation")
        url = reply.first_item("url").get("url")
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise CheckFailed(f"url is not an absolute http(s) URL: {url!r}")
        image = self.http.send("GET", url)  # deliberately without the bearer token
        image.expect(200, "fetching the url without a token")
        content_type = image.headers.get("content-type", "")
        if not content_type.lower().startswith("image/"):
            raise CheckFailed(f"url Content-Type is {content_type!r}, not image/*")
        nosniff = image.headers.get("x-content-type-options", "")
        if nosniff.strip().lower() != "nosniff":
            raise CheckFailed(f"url X-Content-Type-Options is {nosniff!r}, not nosniff")
        if image_kind(image.body) is None:
            raise CheckFailed(f"url body is not PNG/JPEG/WebP/SVG: {image.body[:12]!r}")

    def check_bad_request(self) -> None:
        reply = self.generate(n=0, response_format="b64_json")
        reply.expect(400, "n=0")
        body = reply.json()
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= set(error):
            raise CheckFailed(f"no OpenAI error envelope: {reply.snippet()}")
        if not isinstance(error["message"], str) or not error["message"]:
            raise CheckFailed("error.message is empty")


class A1111:
    """An Automatic1111 server (``--api``), checked directly."""

    def __init__(self, http: Http, base_url: str, auth: str | None) -> None:
        self.http = http
        self.base = base_url.rstrip("/")
        self.headers = {}
        if auth:
            self.headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()

    def check_models(self) -> None:
        reply = self.http.send("GET", self.base + "/sdapi/v1/sd-models", headers=self.headers)
        reply.expect(200, "sd-models")
        models = reply.json()
        if not isinstance(models, list) or not all(
            isinstance(model, dict) and "title" in model for model in models
        ):
            raise CheckFailed(f"sd-models is not a list of models: {reply.snippet()}")

    def check_txt2img(self) -> None:
        payload = {"prompt": PROMPT, "steps": 1, "width": 64, "height": 64, "batch_size": 1}
        reply = self.http.send(
            "POST", self.base + "/sdapi/v1/txt2img", payload=payload, headers=self.headers
        )
        reply.expect(200, "txt2img")
        body = reply.json()
        images = body.get("images") if isinstance(body, dict) else None
        if not isinstance(images, list) or not images:
            raise CheckFailed("txt2img reply has no images")
        decode_image(images[0], "txt2img images[0]")


class OpenAIImages:
    """An OpenAI-style image shim (InvokeAI/ComfyUI), checked directly."""

    def __init__(self, http: Http, base_url: str) -> None:
        self.http = http
        self.base = base_url.rstrip("/")

    def check_healthz(self) -> None:
        self.http.send("GET", self.base + "/healthz").expect(200, "healthz")

    def check_generation(self) -> None:
        payload: dict[str, Any] = {
            "prompt": PROMPT,
            "n": 1,
            "size": "64x64",
            "steps": 1,
            "response_format": "b64_json",
        }
        reply = self.http.send("POST", self.base + "/v1/images/generations", payload=payload)
        reply.expect(200, "generation")
        decode_image(reply.first_item("generation").get("b64_json"), "b64_json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Check the gateway's image generation (and optionally its backends)."
    )
    parser.add_argument("--gateway-base-url", type=http_url, help="e.g. https://127.0.0.1:8443")
    parser.add_argument(
        "--token", help="the gateway's bearer token (default: $GATEWAY_BEARER_TOKEN)"
    )
    parser.add_argument("--model", help="model or alias to ask the gateway for")
    parser.add_argument("--size", default="256x256", help="size for gateway generations")
    parser.add_argument("--insecure", action="store_true", help="skip TLS verification")
    parser.add_argument("--cafile", help="CA bundle to trust (e.g. Caddy's local root.crt)")
    parser.add_argument(
        "--also-check-a1111", type=http_url, metavar="URL", help="an Automatic1111 server"
    )
    parser.add_argument(
        "--a1111-auth",
        metavar="USER:PASSWORD",
        help="HTTP Basic credentials for --also-check-a1111 (default: $A1111_API_AUTH)",
    )
    parser.add_argument(
        "--also-check-openai-images", type=http_url, metavar="URL", help="an image shim"
    )
    parser.add_argument("--timeout", type=seconds, default=120.0, help="seconds per request")
    return parser


def run_checks(checks: Sequence[tuple[str, Callable[[], None]]]) -> int:
    """Run each check, print its line and the summary; the exit status (0 or 1)."""
    failed = 0
    for name, check in checks:
        try:
            check()
        except CheckFailed as error:
            failed += 1
            print(f"FAIL {name}: {error}", flush=True)
        except Exception as error:  # a malformed reply must not hide the other checks
            failed += 1
            print(f"FAIL {name}: {type(error).__name__}: {error}", flush=True)
        else:
            print(f"PASS {name}", flush=True)
    print(f"{len(checks) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.gateway_base_url or args.also_check_a1111 or args.also_check_openai_images):
        parser.error("give --gateway-base-url and/or --also-check-a1111/--also-check-openai-images")
    token = args.token or os.environ.get("GATEWAY_BEARER_TOKEN")
    if args.gateway_base_url and not token:
        parser.error("the gateway needs a bearer token: --token or $GATEWAY_BEARER_TOKEN")
    try:
        http = Http(tls_context(args.insecure, args.cafile), args.timeout, user_agent=USER_AGENT)
    except (OSError, ssl.SSLError) as error:
        parser.error(f"--cafile {args.cafile}: {error}")

    checks: list[tuple[str, Callable[[], None]]] = []
    if args.gateway_base_url:
        gateway = Gateway(http, args.gateway_base_url, token, args.model, args.size)
        checks += [
            ("gateway-b64-json", gateway.check_b64_json),
            ("gateway-url", gateway.check_url),
            ("gateway-bad-request", gateway.check_bad_request),
        ]
    if args.also_check_a1111:
        auth = args.a1111_auth or os.environ.get("A1111_API_AUTH")
        a1111 = A1111(http, args.also_check_a1111, auth)
        checks += [("a1111-sd-models", a1111.check_models), ("a1111-txt2img", a1111.check_txt2img)]
    if args.also_check_openai_images:
        shim = OpenAIImages(http, args.also_check_openai_images)
        checks += [
            ("openai-images-healthz", shim.check_healthz),
            ("openai-images-generation", shim.check_generation),
        ]
    return run_checks(checks)


if __name__ == "__main__":
    sys.exit(main())
