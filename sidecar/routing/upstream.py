"""HTTP(S) clients for backends: one pooled session per backend, with its TLS context.

Transport failures are translated here, once, into the gateway's errors, so the API
layer never sees an aiohttp exception and no message carries a backend URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from yarl import URL

from ..config.schema import BackendConfig, TlsConfig
from ..errors import (
    GatewayError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

MAX_UPSTREAM_BODY = 64 * 1024 * 1024
_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
_TLS_REASONS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the backend requires a client certificate",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the backend refused the handshake",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the backend rejected the client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the backend does not trust the client certificate's CA",
    "WRONG_VERSION_NUMBER": "the backend does not speak TLS on this port",
}


class TlsSetupError(ValueError):
    """A backend's TLS files cannot be loaded."""


def build_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """The client TLS context for one backend: CA bundle, verification, client cert.

    Blocking (reads PEM files): build it in a thread while the loop runs.
    """
    try:
        if tls.ca_bundle is not None:
            context = ssl.create_default_context(cafile=str(tls.ca_bundle))
        else:
            context = ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"ca_bundle cannot be loaded: {_ssl_reason(exc)}") from exc
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.client_cert is not None:
        try:
            context.load_cert_chain(
                str(tls.client_cert), str(tls.client_key) if tls.client_key else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(f"client certificate cannot be loaded: {_ssl_reason(exc)}") from exc
    return context


class UpstreamCall:
    """One request to a backend, open until the caller closes it (a stream stays open)."""

    def __init__(self, client: BackendClient, response: aiohttp.ClientResponse) -> None:
        self._client = client
        self.response = response
        self._closed = False

    @property
    def status(self) -> int:
        return self.response.status

    async def read_json(self) -> tuple[bytes, Any]:
        """The whole body and its parsed JSON; garbage or a cut-off body is a 502."""
        try:
            async with asyncio.timeout(self._client.config.timeouts.read_s):
                body = await self.response.content.read(MAX_UPSTREAM_BODY + 1)
                if len(body) > MAX_UPSTREAM_BODY:
                    raise UpstreamError(f"backend '{self._client.name}' sent an oversized reply")
        except GatewayError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._client.translate(exc) from None
        try:
            return body, json.loads(body)
        except ValueError:
            raise UpstreamError(
                f"backend '{self._client.name}' returned a response that is not JSON"
            ) from None

    async def events(self) -> AsyncIterator[bytes]:
        """Server-sent events, each as its raw bytes ending in a blank line.

        The first event may take the read timeout (prompt processing); later ones the
        stream-idle timeout. Ends at EOF; transport failures raise gateway errors.
        """
        content = self.response.content
        timeouts = self._client.config.timeouts
        wait = timeouts.read_s
        while True:
            try:
                async with asyncio.timeout(wait):
                    event = await _read_event(content)
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                raise self._client.translate(exc, streaming=True) from None
            if event is None:
                return
            wait = timeouts.stream_idle_s
            yield event

    async def raise_for_status(self) -> None:
        """Relay a backend's 4xx with its message; a 5xx becomes 502."""
        if self.status < 400:
            return
        try:
            async with asyncio.timeout(self._client.config.timeouts.read_s):
                body = await self.response.content.read(64 * 1024)
        except (TimeoutError, aiohttp.ClientError, OSError):
            body = b""
        message = _upstream_message(body) or self.response.reason or "error"
        name = self._client.name
        if self.status == 429:
            retry = self.response.headers.get("Retry-After", "1")
            raise UpstreamStatusError(
                429,
                f"backend '{name}' is rate limiting: {message}",
                code="upstream_rate_limited",
                retry_after=int(retry) if retry.isdigit() else 1,
            )
        if 400 <= self.status < 500 and self.status not in (401, 403, 407):
            raise UpstreamStatusError(self.status, f"backend '{name}': {message}")
        raise UpstreamError(f"backend '{name}' answered {self.status}: {message}")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.response.close()
            self._client._call_done()


class BackendClient:
    """The pooled session for one backend, created at start-up and closed once idle."""

    def __init__(self, config: BackendConfig, ssl_context: ssl.SSLContext | None) -> None:
        self.config = config
        self.name = config.name
        self._ssl = ssl_context if config.url.scheme == "https" else None
        self._session: aiohttp.ClientSession | None = None
        self._active = 0
        self._retired = False
        self._headers = dict(_JSON_HEADERS)
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0,
                ssl=self._ssl if self._ssl is not None else True,
                enable_cleanup_closed=True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self.config.timeouts.connect_s,
                    sock_connect=self.config.timeouts.connect_s,
                ),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def url(self, endpoint: str) -> URL:
        return self.config.url / endpoint

    async def post(self, endpoint: str, payload: dict[str, Any], request_id: str) -> UpstreamCall:
        """Send a JSON request and wait (up to the read timeout) for the response head."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {**self._headers, "X-Request-Id": request_id}
        self._active += 1
        try:
            async with asyncio.timeout(self.config.timeouts.read_s):
                response = await self.session.post(self.url(endpoint), data=body, headers=headers)
        except BaseException as exc:
            self._call_done()
            if isinstance(exc, TimeoutError | aiohttp.ClientError | OSError):
                raise self.translate(exc) from None
            raise
        return UpstreamCall(self, response)

    async def probe(self, path: str, timeout_s: float) -> tuple[int, bytes]:
        """GET a health path on the backend's origin; transport errors raise."""
        url = self.config.url.with_path(path)
        async with asyncio.timeout(timeout_s):
            headers = (
                {"Authorization": self._headers["Authorization"]} if self.config.api_key else {}
            )
            async with self.session.get(url, headers=headers) as response:
                return response.status, await response.content.read(4 * 1024 * 1024)

    def translate(self, exc: BaseException, *, streaming: bool = False) -> GatewayError:
        """A transport failure as the gateway error the client should see."""
        name = self.name
        tls_reason = _tls_reason(exc)
        if tls_reason is not None:
            return UpstreamUnavailable(
                f"TLS failure talking to backend '{name}': {tls_reason}", code="upstream_tls_error"
            )
        if isinstance(exc, TimeoutError):
            phase = "stream went idle" if streaming else "did not answer"
            return UpstreamTimeout(f"backend '{name}' {phase} within the configured timeout")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return UpstreamUnavailable(f"cannot connect to backend '{name}': {_os_reason(exc)}")
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
            return UpstreamError(f"backend '{name}' closed the connection mid-response")
        if isinstance(exc, ValueError):
            return UpstreamError(f"backend '{name}' sent a malformed stream")
        return UpstreamError(f"backend '{name}' failed: {type(exc).__name__}")

    def _call_done(self) -> None:
        self._active -= 1
        if self._retired and self._active == 0:
            asyncio.get_running_loop().create_task(self.close())

    def retire(self) -> None:
        """Close the session once the requests still using it have finished."""
        self._retired = True
        if self._active == 0:
            asyncio.get_running_loop().create_task(self.close())

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


async def _read_event(content: aiohttp.StreamReader) -> bytes | None:
    lines: list[bytes] = []
    while True:
        line = await content.readline()
        if not line:
            return b"".join(lines) + b"\n" if lines else None
        if line in (b"\n", b"\r\n"):
            if lines:
                lines.append(line)
                return b"".join(lines)
            continue
        lines.append(line)


def _upstream_message(body: bytes) -> str | None:
    with contextlib.suppress(ValueError):
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            error = parsed.get("error", parsed.get("detail"))
            if isinstance(error, dict):
                error = error.get("message")
            if isinstance(error, str):
                return error[:500]
    text = body.decode("utf-8", "replace").strip()
    return text[:200] if text and "<" not in text[:1] else None


def _tls_reason(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, aiohttp.ClientConnectorCertificateError):
            return _ssl_reason(seen.certificate_error)
        if isinstance(seen, ssl.SSLError):
            return _ssl_reason(seen)
        seen = seen.__cause__ or seen.__context__ or _inner_os_error(seen)
    return None


def _inner_os_error(exc: BaseException) -> BaseException | None:
    inner = getattr(exc, "os_error", None)
    return inner if isinstance(inner, BaseException) and inner is not exc else None


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return _TLS_REASONS.get(reason, reason.replace("_", " ").lower())
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _os_reason(exc: aiohttp.ClientConnectorError) -> str:
    error = exc.os_error
    if error is not None and error.errno:
        return os.strerror(error.errno).lower()
    return "connection failed"
