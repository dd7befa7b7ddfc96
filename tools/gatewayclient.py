"""The one small HTTP client the operator scripts in ``tools/`` share; standard library only.

``verify_gateway.py``, ``verify_images.py`` and ``run_evals.py`` run on any host with
Python 3.11, without the project's virtualenv, and talk to a gateway (or a backend) the
way any client does. They all do it through this module, so they agree on the rules:

- Blocking urllib with one TLS context and one timeout per client. Proxy variables are
  ignored: the gateway is on the LAN, and a proxy would change what is checked and timed.
- An HTTP error status is an answer, never an exception: ``Http.open`` returns the
  ``HTTPError`` as the response and ``Http.send`` returns a ``Reply`` for it. Only a
  failure to talk at all raises: ``open`` lets ``OSError`` / ``http.client.HTTPException``
  through (``reason`` says why in a few words), ``send`` turns it into ``CheckFailed``.
- A body is read up to ``MAX_BODY_BYTES``.
- Redirects are followed only by a client made with ``follow_redirects=True``; without it
  a redirect is an answer to check, never a reason to send the token elsewhere.

The scripts import it as a sibling module: run as ``python tools/x.py`` the ``tools``
folder is ``sys.path[0]`` already; loaded by path (``runpy.run_path``, importlib, as the
tests do) each script appends its own folder to ``sys.path`` first.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

MAX_BODY_BYTES = 64 * 1024 * 1024


class CheckFailed(Exception):
    """A check's reason for failing, printed after ``FAIL name:``."""


@dataclass(frozen=True)
class Reply:
    """A whole answer: status, headers (names lower-cased) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as error:
            raise CheckFailed(f"HTTP {self.status}: body is not JSON: {self.snippet()}") from error

    def object(self, what: str) -> dict[str, Any]:
        """The body as a JSON object, or a failure naming ``what``."""
        body = self.json()
        if not isinstance(body, dict):
            raise CheckFailed(f"{what}: not a JSON object: {self.snippet()}")
        return body

    def first_item(self, what: str) -> dict[str, Any]:
        """``data[0]`` of an OpenAI list reply, or a failure naming ``what``."""
        data = self.object(what).get("data")
        if not isinstance(data, list) or not data or not isinstance(data[0], dict):
            raise CheckFailed(f"{what}: no data[0] object: {self.snippet()}")
        return data[0]

    def snippet(self) -> str:
        return " ".join(self.body[:300].decode("utf-8", "replace").split())

    def error_code(self) -> str | None:
        """The ``error.code`` of an OpenAI error envelope, if the body is one."""
        try:
            error = json.loads(self.body).get("error")
        except (ValueError, AttributeError):
            return None
        return error.get("code") if isinstance(error, dict) else None

    def expect(self, status: int, what: str) -> None:
        if self.status != status:
            raise CheckFailed(
                f"{what}: expected HTTP {status}, got {self.status}: {self.snippet()}"
            )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer to check, never a reason to send the token elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Http:
    """Blocking HTTP with one TLS context and timeout, straight to the server (no proxy)."""

    def __init__(
        self,
        context: ssl.SSLContext | None,
        timeout: float,
        *,
        user_agent: str,
        follow_redirects: bool = True,
    ) -> None:
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        if not follow_redirects:
            handlers.append(_NoRedirect())
        self._opener = urllib.request.build_opener(*handlers)
        self.timeout = timeout
        self.user_agent = user_agent

    def open(
        self,
        method: str,
        url: str,
        *,
        payload: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """The response to close (an ``HTTPError`` is one too); a JSON body when ``payload``
        is not None. Failing to talk raises ``OSError`` or ``http.client.HTTPException``."""
        data = json.dumps(payload).encode() if payload is not None else None
        all_headers = {"User-Agent": self.user_agent, **(headers or {})}
        request = urllib.request.Request(  # noqa: S310 - an operator-given http(s) URL
            url, data=data, method=method, headers=all_headers
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            return self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            return error

    def send(
        self,
        method: str,
        url: str,
        *,
        payload: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """The whole answer; a failure to talk at all is ``CheckFailed``."""
        try:
            with self.open(method, url, payload=payload, headers=headers) as response:
                status = getattr(response, "status", None) or response.code
                return Reply(
                    status,
                    {name.lower(): value for name, value in response.headers.items()},
                    response.read(MAX_BODY_BYTES),
                )
        except (OSError, http.client.HTTPException) as error:
            raise CheckFailed(f"{method} {url}: {reason(error)}") from error


def image_kind(data: bytes) -> str | None:
    """``png``, ``jpeg``, ``webp`` or ``svg`` from the leading bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    head = data[:1024].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")) and b"<svg" in head:
        return "svg"
    return None


def decode_image(encoded: Any, what: str) -> str:
    """The kind of a base64 image, or a failure naming ``what`` and saying why it is not one."""
    if not isinstance(encoded, str) or not encoded:
        raise CheckFailed(f"{what}: no base64 image")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise CheckFailed(f"{what}: not valid base64") from error
    kind = image_kind(data)
    if kind is None:
        raise CheckFailed(f"{what}: decoded bytes are not PNG/JPEG/WebP/SVG: {data[:12]!r}")
    return kind


def reason(error: BaseException) -> str:
    """Why talking failed, in a few words (``timed out``, ``[Errno 111] Connection refused``)."""
    why = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
    if isinstance(why, TimeoutError):
        return "timed out"
    return str(why) or type(error).__name__


def tls_context(insecure: bool, cafile: str | None) -> ssl.SSLContext:
    """The default context, trusting ``cafile`` too; ``insecure`` verifies nothing.
    An unreadable or invalid ``cafile`` raises ``OSError`` / ``ssl.SSLError``."""
    context = ssl.create_default_context(cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def http_url(text: str) -> str:
    """An argparse ``type``: an absolute http(s) URL, as given."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {text!r}")
    return text


def seconds(text: str) -> float:
    """An argparse ``type``: a number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value
