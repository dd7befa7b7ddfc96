"""The audio endpoints: transcriptions and translations (uploads), speech (audio back).

``POST /v1/audio/transcriptions`` and ``/v1/audio/translations`` take the OpenAI
multipart form (``file``, ``model``, and any other fields, passed on as they are). The
form is read part by part and re-encoded for the backend as it is read: the file is
streamed upstream in pieces, never held whole, unless it comes before ``model`` (the
SDKs send ``model`` first; ``curl -F`` in the order given), in which case it is held
until ``model`` is known — either way the whole upload is bounded by
``GATEWAY_MAX_BODY_BYTES`` (413), each other field by ``MAX_FIELD_BYTES`` and their number
by ``MAX_FIELDS``. ``model`` is routed like chat (capability ``transcriptions``), and the
backend gets the upstream model name.

``POST /v1/audio/speech`` takes JSON (capability ``speech``) and streams the backend's
audio back chunk by chunk as it arrives, with the backend's audio type.

Replies are relayed by their type: JSON (checked strictly), plain text, subtitles,
server-sent events (``stream: true``; each event bounded as chat's are) or audio. Every
call goes through ``backend_call``, admitted like chat. A JSON reply's ``usage`` (a
transcription's ``input_tokens``/``output_tokens``) goes on the access record, for the
usage ledger and the key's token limits; nothing is estimated for audio.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import AsyncIterator
from typing import cast

from aiohttp import BodyPartReader, MultipartReader, StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import (
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    UpstreamError,
    error_envelope,
)
from ..routing.call import backend_call
from ..routing.router import resolve, upstream_body
from ..routing.upstream import UpstreamCall
from ..typedefs import ACCESS, REGISTRY, REQUEST_ID, SETTINGS
from ..usage import tokens
from ..wire.body import read_json_object
from ..wire.model_name import check_model_name, model_field
from . import validation

log = logging.getLogger("gateway.api")

MAX_FIELDS = 64
MAX_FIELD_BYTES = 64 * 1024
CHUNK_BYTES = 64 * 1024
_FIELD_NAME = re.compile(r"[A-Za-z0-9_.\[\]-]{1,64}")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9!#$&^_.+-]{1,64}")
_TEXT_TYPES = {"text/plain", "text/vtt", "application/x-subrip", "text/srt"}
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# What aiohttp's multipart reader raises on a malformed form.
_MALFORMED = (ValueError, AssertionError, RuntimeError, HttpProcessingError)


async def transcriptions(request: web.Request) -> web.StreamResponse:
    return await _relay_upload(request, "audio/transcriptions")


async def translations(request: web.Request) -> web.StreamResponse:
    return await _relay_upload(request, "audio/translations")


async def speech(request: web.Request) -> web.StreamResponse:
    payload = await read_json_object(request)
    model = model_field(payload)
    validation.check_speech(payload)
    record = request[ACCESS]
    record.asked_for(model)
    route = resolve(request.app[REGISTRY].current, model, "speech")
    record.backend = route.backend.name
    headers = route.headers()
    try:
        async with backend_call(
            route.backend,
            "speech",
            "audio/speech",
            upstream_body(payload, route),
            request[REQUEST_ID],
        ) as call:
            return await relay_reply(request, call, headers)
    except GatewayError as exc:
        exc.headers.update(headers)
        raise


async def _relay_upload(request: web.Request, endpoint: str) -> web.StreamResponse:
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes")
    if request.content_type != "multipart/form-data":
        if request.content_type == "application/json":
            await read_json_object(request)  # strict JSON everywhere: bad JSON says so first
        raise InvalidRequest(
            "Send the audio as multipart/form-data with a 'file' and a 'model'", param="file"
        )
    try:
        # The whole body counts toward the limit, a preamble and part headers included.
        body = cast(StreamReader, _BoundedBody(request.content, limit))
        reader = MultipartReader(request.headers, body)
    except _MALFORMED:
        raise _malformed() from None
    upload = Upload(reader, limit)
    await upload.read_head()
    model = check_model_name(upload.model())
    record = request[ACCESS]
    record.asked_for(model)
    route = resolve(request.app[REGISTRY].current, model, "transcriptions")
    record.backend = route.backend.name
    headers = route.headers()
    try:
        async with backend_call(
            route.backend,
            "transcriptions",
            endpoint,
            None,
            request[REQUEST_ID],
            body=upload.encoded(route.upstream_model),
            content_type=f"multipart/form-data; boundary={upload.boundary}",
        ) as call:
            return await relay_reply(request, call, headers)
    except GatewayError as exc:
        failure = upload.failure or exc  # the client's upload at fault, not the backend
        failure.headers.update(headers)
        raise failure from None


class _BoundedBody:
    """The request body as the multipart reader reads it, every byte the client sent
    counted (not only the parts' contents): past ``limit`` a read is a 413. Without it a
    chunked upload could send any amount as a preamble or as part headers."""

    def __init__(self, content: StreamReader, limit: int) -> None:
        self._content = content
        self._limit = limit

    def _check(self) -> None:
        if self._content.total_bytes > self._limit:
            raise PayloadTooLarge(f"Request body is larger than the limit of {self._limit} bytes")

    async def readline(self, *, max_line_length: int | None = None) -> bytes:
        self._check()
        line = await self._content.readline(max_line_length=max_line_length)
        self._check()
        return line

    async def read(self, n: int = -1) -> bytes:
        self._check()
        data = await self._content.read(n)
        self._check()
        return data

    def at_eof(self) -> bool:
        return self._content.at_eof()

    def unread_data(self, data: bytes) -> None:
        self._content.unread_data(data)


class Upload:
    """The client's multipart form, re-encoded for the backend as it is read."""

    def __init__(self, reader: MultipartReader, limit: int) -> None:
        self._reader = reader
        self._limit = limit
        self._size = 0
        self._count = 0
        self._fields: list[tuple[str, bytes]] = []
        self._file: BodyPartReader | None = None
        self._file_head = b""
        self._held: list[bytes] | None = None
        self.boundary = secrets.token_hex(16)
        self.failure: GatewayError | None = None

    def model(self) -> str | None:
        for name, value in self._fields:
            if name == "model":
                try:
                    return value.decode()
                except UnicodeDecodeError:
                    raise InvalidRequest("'model' must be UTF-8 text", param="model") from None
        return None

    async def read_head(self) -> None:
        """Read up to the file, and past it (holding the file) until ``model`` is known."""
        while True:
            part = await self._next()
            if part is None:
                break
            if part.filename is not None:
                self._take_file(part)
                if self._has_model():
                    return
                self._held = [chunk async for chunk in self._file_chunks(part)]
            else:
                self._fields.append(await self._field(part))
                if self._file is not None and self._has_model():
                    return
        if self._file is None:
            raise InvalidRequest(
                "'file' is required", param="file", code="missing_required_parameter"
            )
        if not self._has_model():
            raise InvalidRequest(
                "'model' is required", param="model", code="missing_required_parameter"
            )

    async def encoded(self, model: str) -> AsyncIterator[bytes]:
        """The form for the backend: the fields read so far (``model`` replaced), the file,
        then whatever follows it, read on as the backend takes it."""
        try:
            for name, value in self._fields:
                yield self._encode(name, model.encode() if name == "model" else value)
            yield self._file_head
            if self._held is not None:
                for chunk in self._held:
                    yield chunk
                self._held = None
            elif self._file is not None:
                async for chunk in self._file_chunks(self._file):
                    yield chunk
            yield b"\r\n"
            while (part := await self._next()) is not None:
                if part.filename is not None:
                    raise InvalidRequest("Send one 'file' only", param="file")
                name, value = await self._field(part)
                yield self._encode(name, value)
            yield f"--{self.boundary}--\r\n".encode()
        except GatewayError as exc:
            self.failure = exc
            raise

    def _has_model(self) -> bool:
        return any(name == "model" for name, _ in self._fields)

    def _take_file(self, part: BodyPartReader) -> None:
        if self._file is not None:
            raise InvalidRequest("Send one 'file' only", param="file")
        if part.name != "file":
            raise InvalidRequest("The audio must be sent as the field 'file'", param="file")
        self._file = part
        filename = (part.filename or "audio").replace("\\", "/").rsplit("/", 1)[-1]
        filename = "".join(c if c.isprintable() and c not in '"' else "_" for c in filename)
        media = part.headers.get("Content-Type", "").split(";")[0].strip()
        media = media if _MEDIA_TYPE.fullmatch(media) else "application/octet-stream"
        self._file_head = (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{filename[:200] or "audio"}"\r\nContent-Type: {media}\r\n\r\n'
        ).encode()

    async def _next(self) -> BodyPartReader | None:
        try:
            part = await self._reader.next()
        except _MALFORMED:
            raise _malformed() from None
        if part is None:
            return None
        if not isinstance(part, BodyPartReader):
            raise InvalidRequest("Nested multipart parts are not accepted", param="file")
        self._count += 1
        if self._count > MAX_FIELDS:
            raise InvalidRequest(f"At most {MAX_FIELDS} form fields are accepted")
        return part

    async def _field(self, part: BodyPartReader) -> tuple[str, bytes]:
        name = part.name or ""
        if not _FIELD_NAME.fullmatch(name):
            raise InvalidRequest("Form field names are letters, digits and _.-[]", param="file")
        pieces: list[bytes] = []
        size = 0
        while chunk := await _read_chunk(part):
            size += len(chunk)
            self._count_bytes(len(chunk))
            if size > MAX_FIELD_BYTES:
                raise InvalidRequest(
                    f"Form field '{name}' is longer than {MAX_FIELD_BYTES} bytes", param=name
                )
            pieces.append(chunk)
        return name, b"".join(pieces)

    async def _file_chunks(self, part: BodyPartReader) -> AsyncIterator[bytes]:
        while chunk := await _read_chunk(part):
            self._count_bytes(len(chunk))
            yield chunk

    def _count_bytes(self, size: int) -> None:
        self._size += size
        if self._size > self._limit:
            raise PayloadTooLarge(f"Request body is larger than the limit of {self._limit} bytes")

    def _encode(self, name: str, value: bytes) -> bytes:
        head = f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        return head.encode() + value + b"\r\n"


async def _read_chunk(part: BodyPartReader) -> bytes:
    try:
        return await part.read_chunk(CHUNK_BYTES)
    except _MALFORMED:
        raise _malformed() from None


def _malformed() -> InvalidRequest:
    return InvalidRequest("The multipart body cannot be read", param="file")


async def relay_reply(
    request: web.Request, call: UpstreamCall, headers: dict[str, str]
) -> web.StreamResponse:
    """The backend's reply by its type: JSON (strict), text, events, or audio in chunks."""
    media = call.response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media == "text/event-stream":
        return await _relay_events(request, call, headers)
    if media == "application/json":
        body, parsed = await call.read_json()
        found = tokens.counts(parsed.get("usage")) if isinstance(parsed, dict) else None
        if found is not None:  # a transcription's tokens; audio has no text to estimate
            tokens.charge(request[ACCESS], found, lambda: (0, 0))
        return web.Response(body=body, content_type="application/json", headers=headers)
    if media in _TEXT_TYPES:
        body = await call.read_body()
        return web.Response(body=body, content_type=media, charset="utf-8", headers=headers)
    return await _relay_audio(request, call, media, headers)


async def _relay_events(
    request: web.Request, call: UpstreamCall, headers: dict[str, str]
) -> web.StreamResponse:
    record = request[ACCESS]
    record.stream = True
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", **_SSE_HEADERS, **headers}
    )
    await response.prepare(request)
    try:
        async for run in call.event_runs():
            record.first_token()
            await response.write(run)
            record.bytes_out += len(run)
    except GatewayError as exc:
        log.warning("stream %s failed: %s", request[REQUEST_ID], exc.message)
        envelope = error_envelope(exc.message, exc.error_type, exc.param, exc.code)
        await response.write(b"data: " + json.dumps(envelope).encode() + b"\n\n")
    await response.write_eof()
    return response


async def _relay_audio(
    request: web.Request, call: UpstreamCall, media: str, headers: dict[str, str]
) -> web.StreamResponse:
    if not (media.startswith("audio/") and _MEDIA_TYPE.fullmatch(media)):
        if media not in ("application/octet-stream", ""):
            raise UpstreamError(
                f"backend '{headers['X-Backend-Used']}' answered with an unexpected type"
            )
        media = "application/octet-stream"
    record = request[ACCESS]
    response = web.StreamResponse(headers={**headers, "X-Content-Type-Options": "nosniff"})
    response.content_type = media
    length = call.response.content_length
    if length is not None and "Content-Encoding" not in call.response.headers:
        response.content_length = length  # (a compressed body arrives decompressed)
    await response.prepare(request)
    try:
        async for chunk in call.chunks(CHUNK_BYTES):
            record.first_token()
            await response.write(chunk)
            record.bytes_out += len(chunk)
        await response.write_eof()
    except GatewayError as exc:
        # The headers are gone: cut the body short so the client sees the failure.
        log.warning("audio %s broke off: %s", request[REQUEST_ID], exc.message)
        if request.transport is not None:
            request.transport.close()
    return response
