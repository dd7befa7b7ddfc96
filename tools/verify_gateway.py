#!/usr/bin/env python3
"""Say whether a gateway works: the contract tests, then a live smoke suite over HTTP.

It talks to the gateway the way a client does (standard library only, through its sibling
``gatewayclient.py``; no ``sidecar`` imports), so it can check any running gateway, or one
it starts itself:

    python tools/verify_gateway.py [--skip-pytest] [--check-images] [--require-backend]
        [--appliance] [--base-url https://127.0.0.1:8443 --token ... (--cafile CA | --insecure)]

1. Unless ``--skip-pytest``: ``python -m pytest -q -x tests --ignore=tests/e2e`` in this
   repository, with a timeout.
2. With ``--base-url``: the smoke suite against that gateway (token from ``--token`` or
   ``$GATEWAY_BEARER_TOKEN``). Without it: ``python -m sidecar up`` in a temporary data
   directory on a free loopback port with a generated token (trusting that directory's
   Caddy CA), the smoke suite, then the gateway is stopped (SIGTERM, then SIGKILL to its
   process group) and the directory removed, whatever happened.
3. With ``--appliance`` (which implies ``--require-backend``):
   ``tools/freeze_release.py --verify release_manifest.json``.

Checks, in order: healthz, readyz, models, backends, chat, chat-stream, embeddings, tools, ui,
and with ``--check-images`` images-b64 and images-url. Each prints one line, ``PASS name``,
``FAIL name: reason`` or ``SKIP name: reason``; then ``N passed, M failed, K skipped``.

A backend is *real* unless its class is ``mock`` or its protocol ``mock_images``. The
backend-dependent checks (chat, chat-stream, embeddings, images) use a model that a ready
backend serves, preferring real backends; when no real backend is healthy, the
``backends`` line is a SKIP that says so and those checks run against the fake backends
only. With ``--require-backend`` that line is a FAIL naming every backend and its state.

Exit status: 0 when nothing failed, 1 when a check failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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

ROOT = Path(__file__).resolve().parents[1]
UP_LINE = "Local AI Gateway is up."
USER_AGENT = "local-ai-gateway-verify/1"
PROMPT = "verify_gateway: reply with one short sentence."
# How many models to try before deciding no listed model has a capability.
MAX_MODEL_TRIES = 8
# Environment that would point a self-started gateway somewhere other than its own
# temporary data directory, site and Caddy CA.
_FOREIGN_ENV = (
    "GATEWAY_SOCKET",
    "GATEWAY_HOST",
    "GATEWAY_PORT",
    "GATEWAY_TLS_MODE",
    "GATEWAY_TLS_CERT_PATH",
    "GATEWAY_TLS_KEY_PATH",
    "PUBLIC_BASE_URL",
)


class CheckSkipped(Exception):
    """A check's reason for not running, printed after ``SKIP name:``."""


def gateway_http(context: ssl.SSLContext, timeout: float) -> Http:
    """This tool's client: redirects followed (``/ui`` may send a browser to its login page)."""
    return Http(context, timeout, user_agent=USER_AGENT, follow_redirects=True)


# --- the gateway's backends as /v1/gateway/status describes them ----------------------


@dataclass(frozen=True)
class BackendView:
    name: str
    backend_class: str
    protocol: str
    state: str
    error: str | None
    capabilities: tuple[str, ...]
    models: tuple[str, ...]

    @classmethod
    def from_status(cls, entry: Any) -> BackendView:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise CheckFailed(f"/v1/gateway/status: a backend entry has no name: {entry!r:.200}")
        health = entry.get("health") if isinstance(entry.get("health"), dict) else {}
        capabilities = entry.get("capabilities")
        models = entry.get("models")
        return cls(
            name=entry["name"],
            backend_class=str(entry.get("class")),
            protocol=str(entry.get("protocol")),
            state=str(health.get("state", "unknown")),
            error=health.get("error") if isinstance(health.get("error"), str) else None,
            capabilities=tuple(capabilities) if isinstance(capabilities, dict) else (),
            models=tuple(m for m in models if isinstance(m, str))
            if isinstance(models, list)
            else (),
        )

    @property
    def real(self) -> bool:
        return self.backend_class != "mock" and self.protocol != "mock_images"

    @property
    def healthy(self) -> bool:
        return self.state == "ready"

    def describe(self) -> str:
        text = f"{self.name}: {self.state}"
        if self.error and not self.healthy:
            text += f" ({self.error[:80]})"
        return text if self.real else f"{text} [fake]"


def describe_all(backends: Sequence[BackendView]) -> str:
    return ", ".join(backend.describe() for backend in backends) or "none configured"


@dataclass(frozen=True)
class Choice:
    """A model to send (``None``: let the gateway pick its default) and who serves it."""

    backend: BackendView
    model: str | None


# --- the live smoke suite ---------------------------------------------------------------


@dataclass
class Report:
    """Prints each check's line as it finishes, and the summary."""

    passed: int = 0
    failed: int = 0
    skipped: int = 0

    def run(self, name: str, check: Callable[[], str | None]) -> bool:
        """Run one check; True when it passed."""
        try:
            detail = check()
        except CheckSkipped as reason:
            self.skipped += 1
            self._line(f"SKIP {name}: {reason}")
            return False
        except CheckFailed as reason:
            self.failed += 1
            self._line(f"FAIL {name}: {reason}")
            return False
        except Exception as error:  # a malformed reply must not hide the other checks
            self.failed += 1
            self._line(f"FAIL {name}: {type(error).__name__}: {error}")
            return False
        self.passed += 1
        self._line(f"PASS {name}: {detail}" if detail else f"PASS {name}")
        return True

    def finish(self) -> int:
        self._line(f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped")
        return 1 if self.failed else 0

    @staticmethod
    def _line(text: str) -> None:
        print(text, flush=True)


@dataclass
class Smoke:
    """The live checks against one gateway, in the order a request flows."""

    http: Http
    base_url: str
    token: str
    require_backend: bool = False
    check_images: bool = False
    health_wait_s: float = 10.0
    backends: list[BackendView] | None = None
    owners: dict[str, str] = field(default_factory=dict)  # model id -> owned_by
    chat_choice: Choice | None = None

    def run(self, report: Report) -> None:
        checks: list[tuple[str, Callable[[], str | None]]] = [
            ("healthz", self.check_healthz),
            ("readyz", self.check_readyz),
            ("models", self.check_models),
            ("backends", self.check_backends),
            ("chat", self.check_chat),
            ("chat-stream", self.check_chat_stream),
            ("embeddings", self.check_embeddings),
            ("tools", self.check_tools),
            ("ui", self.check_ui),
        ]
        if self.check_images:
            checks += [("images-b64", self.check_images_b64), ("images-url", self.check_images_url)]
        for name, check in checks:
            report.run(name, check)

    # HTTP with the token

    def get(self, path: str, *, auth: bool = True) -> Reply:
        return self.http.send("GET", self.base_url + path, headers=self._auth(auth))

    def post(self, path: str, payload: dict[str, Any]) -> Reply:
        return self.http.send("POST", self.base_url + path, payload=payload, headers=self._auth())

    def _auth(self, auth: bool = True) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if auth else {}

    # the checks

    def check_healthz(self) -> str:
        reply = self.get("/healthz", auth=False)
        reply.expect(200, "GET /healthz")
        body = reply.json()
        if not isinstance(body, dict) or body.get("status") != "ok":
            raise CheckFailed(f"status is not ok: {reply.snippet()}")
        return "ok"

    def check_ui(self) -> str:
        """The browser UI answers (a page, or the login page it redirects to) with its
        security headers; a UI closed to this address is a skip, not a failure."""
        reply = self.get("/ui", auth=False)
        if reply.status == 403 and b"UI_IP_ALLOWLIST" in reply.body:
            raise CheckSkipped("the UI is closed to this address (UI_IP_ALLOWLIST)")
        reply.expect(200, "GET /ui")
        csp = reply.headers.get("content-security-policy", "")
        if "script-src 'self'" not in csp or reply.headers.get("x-frame-options") != "DENY":
            raise CheckFailed(f"UI page without its security headers (CSP {csp!r})")
        if b'name="csrf-token"' not in reply.body:
            raise CheckFailed(f"not the UI page: {reply.snippet()}")
        return "page served with CSP and X-Frame-Options"

    def check_readyz(self) -> str:
        reply = self.get("/readyz", auth=False)
        reply.expect(200, "GET /readyz")
        body = reply.json()
        if not isinstance(body, dict):
            raise CheckFailed(f"not a JSON object: {reply.snippet()}")
        if body.get("status") != "ready":
            last = (body.get("config") or {}).get("last_reload") or {}
            raise CheckFailed(
                f"status is {body.get('status')!r}: last config reload: {last.get('error')}"
            )
        counts = body.get("backends") or {}
        return (
            f"version {body.get('version')}, "
            f"{counts.get('routable')}/{counts.get('total')} backends routable"
        )

    def check_models(self) -> str:
        reply = self.get("/v1/models")
        reply.expect(200, "GET /v1/models")
        data = reply.object("models").get("data")
        if not isinstance(data, list) or not data:
            raise CheckFailed(f"no models listed: {reply.snippet()}")
        for entry in data:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                self.owners[entry["id"]] = str(entry.get("owned_by"))
        if not self.owners:
            raise CheckFailed(f"no entry has an id: {reply.snippet()}")
        names = list(self.owners)
        more = f", … (+{len(names) - 6})" if len(names) > 6 else ""
        return f"{len(names)} models: {', '.join(names[:6])}{more}"

    def check_backends(self) -> str:
        self.backends = self._wait_for_health()
        real_healthy = [backend for backend in self.backends if backend.real and backend.healthy]
        listing = describe_all(self.backends)
        if real_healthy:
            return listing
        message = f"no real backend is healthy ({listing})"
        if self.require_backend:
            raise CheckFailed(message)
        raise CheckSkipped(f"{message}; backend checks run against fake backends only")

    def check_chat(self) -> str:
        choice, reply = self._routed("chat", lambda model: self.post(*self._chat(model)))
        reply.expect(200, f"chat with {choice.model}")
        body = reply.json()
        try:
            message = body["choices"][0]["message"]
            content, finish = message.get("content"), body["choices"][0].get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError) as error:
            raise CheckFailed(f"no choices[0].message: {reply.snippet()}") from error
        if not isinstance(content, str) or not content.strip():
            raise CheckFailed(f"empty content (finish_reason {finish!r}) from {choice.model}")
        self.chat_choice = choice
        return f"{choice.model} on {_served_by(reply, choice)}, {len(content)} characters"

    def check_chat_stream(self) -> str:
        def send(model: str | None) -> Reply:
            path, payload = self._chat(model)
            return self.post(path, {**payload, "stream": True})

        if self.chat_choice is not None:
            choice, reply = self.chat_choice, send(self.chat_choice.model)
        else:
            choice, reply = self._routed("chat", send)
        reply.expect(200, f"streamed chat with {choice.model}")
        content_type = reply.headers.get("content-type", "")
        if not content_type.startswith("text/event-stream"):
            raise CheckFailed(f"Content-Type is {content_type!r}, not text/event-stream")
        chunks, text = sse_chunks(reply.body)
        return (
            f"{choice.model} on {_served_by(reply, choice)}, "
            f"{chunks} chunks ({len(text)} characters) then [DONE]"
        )

    def check_embeddings(self) -> str:
        def send(model: str | None) -> Reply:
            return self.post("/v1/embeddings", {"model": model, "input": PROMPT})

        choice, reply = self._routed("embeddings", send)
        reply.expect(200, f"embeddings with {choice.model}")
        body = reply.json()
        try:
            vector = body["data"][0]["embedding"]
        except (KeyError, IndexError, TypeError) as error:
            raise CheckFailed(f"no data[0].embedding: {reply.snippet()}") from error
        if not isinstance(vector, list) or not vector:
            raise CheckFailed(f"data[0].embedding is not a non-empty list: {vector!r:.100}")
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vector):
            raise CheckFailed("data[0].embedding holds something other than numbers")
        return f"{choice.model} on {_served_by(reply, choice)}, {len(vector)} dimensions"

    def check_tools(self) -> str:
        listing = self.get("/v1/tools")
        listing.expect(200, "GET /v1/tools")
        data = listing.object("tools").get("data")
        tools = data if isinstance(data, list) else []
        names = {tool.get("name") for tool in tools if isinstance(tool, dict)}
        if "noop" not in names:
            raise CheckSkipped("the tool bus has no 'noop' tool (declare it to check the bus)")
        arguments = {"probe": "verify_gateway", "nonce": secrets.token_hex(4)}
        call = self.post("/v1/tools/noop", {"arguments": arguments})
        call.expect(200, "POST /v1/tools/noop")
        answer = call.object("noop call")
        if answer.get("ok") is not True:
            raise CheckFailed(f"noop call is not ok: {call.snippet()}")
        replay_id, request_hash = answer.get("replay_id"), answer.get("request_hash")
        if not isinstance(replay_id, str) or not isinstance(request_hash, str):
            raise CheckFailed(f"noop call has no replay_id/request_hash: {call.snippet()}")
        path = "/v1/tools/replay/" + urllib.parse.quote(replay_id, safe="")
        record = self.get(path)
        record.expect(200, f"GET {path}")
        recorded = record.object("replay record")
        if recorded.get("request_hash") != request_hash or recorded.get("arguments") != arguments:
            raise CheckFailed(f"the record is not the call that was made: {record.snippet()}")
        replay = self.post(path, {})
        replay.expect(200, f"POST {path}")
        outcome = replay.object("replay")
        if outcome.get("matches") is not True or outcome.get("request_hash_matches") is not True:
            raise CheckFailed(f"the replay does not match the recorded call: {replay.snippet()}")
        return f"noop recorded as {replay_id}; replay matches"

    def check_images_b64(self) -> str:
        choice, reply = self._routed("images", self._images("b64_json"))
        reply.expect(200, "b64_json generation")
        kind = decode_image(reply.first_item("b64_json").get("b64_json"), "data[0].b64_json")
        return f"{kind} from {_served_by(reply, choice)}"

    def check_images_url(self) -> str:
        choice, reply = self._routed("images", self._images("url"))
        reply.expect(200, "url generation")
        url = reply.first_item("url").get("url")
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise CheckFailed(f"url is not an absolute http(s) URL: {url!r}")
        assert isinstance(url, str)
        image = self.http.send("GET", url)  # deliberately without the bearer token
        image.expect(200, "fetching the signed url without a token")
        content_type = image.headers.get("content-type", "")
        if not content_type.lower().startswith("image/"):
            raise CheckFailed(f"the url's Content-Type is {content_type!r}, not image/*")
        if image_kind(image.body) is None:
            raise CheckFailed(f"the url's body is not PNG/JPEG/WebP/SVG: {image.body[:12]!r}")
        return f"{content_type} from {_served_by(reply, choice)}, fetched without the token"

    # picking what to ask for

    def _chat(self, model: str | None) -> tuple[str, dict[str, Any]]:
        messages = [{"role": "user", "content": PROMPT}]
        payload = {"model": model, "messages": messages, "max_tokens": 128, "temperature": 0}
        return "/v1/chat/completions", payload

    def _images(self, response_format: str) -> Callable[[str | None], Reply]:
        def send(model: str | None) -> Reply:
            payload: dict[str, Any] = {
                "prompt": PROMPT,
                "n": 1,
                "size": "256x256",
                "response_format": response_format,
            }
            if model is not None:
                payload["model"] = model
            return self.post("/v1/images/generations", payload)

        return send

    def _routed(self, capability: str, send: Callable[[str | None], Reply]) -> tuple[Choice, Reply]:
        """The first choice the gateway routes for ``capability``, and its reply."""
        choices = self._choices(capability)
        refused: list[str] = []
        for choice in choices[:MAX_MODEL_TRIES]:
            reply = send(choice.model)
            if reply.status == 400 and reply.error_code() == "capability_not_supported":
                refused.append(str(choice.model))
                continue
            return choice, reply
        raise CheckFailed(f"no model accepts {capability}: tried {', '.join(refused)}")

    def _choices(self, capability: str) -> list[Choice]:
        if self.backends is None:
            raise CheckSkipped("no backend list to pick a model from (/v1/gateway/status failed)")
        serving = [b for b in self.backends if capability in b.capabilities]
        if not serving:
            raise CheckSkipped(f"no backend of this gateway serves {capability}")
        ready = [b for b in serving if b.healthy]
        if not ready:
            self._unavailable(f"no healthy backend serves {capability} ({describe_all(serving)})")
        ready.sort(key=lambda backend: not backend.real)  # real backends first
        choices = [choice for backend in ready for choice in self._models(backend, capability)]
        if not choices:
            names = ", ".join(b.name for b in ready)
            self._unavailable(f"the ready {capability} backends ({names}) list no models")
        return choices

    def _models(self, backend: BackendView, capability: str) -> list[Choice]:
        if not backend.models:
            # An images backend often has no model list: the gateway picks its default.
            return [Choice(backend, None)] if capability == "images" else []
        embedding_first = capability == "embeddings"
        ordered = sorted(backend.models, key=lambda m: ("embed" in m.lower()) != embedding_first)
        return [Choice(backend, self._model_name(backend, model)) for model in ordered]

    def _model_name(self, backend: BackendView, model: str) -> str:
        """The plain id when the gateway routes it to ``backend``, else ``backend/id``."""
        return model if self.owners.get(model) == backend.name else f"{backend.name}/{model}"

    def _unavailable(self, message: str) -> None:
        if self.require_backend:
            raise CheckFailed(message)
        raise CheckSkipped(message)

    def _wait_for_health(self) -> list[BackendView]:
        """The backends, once none is still ``unknown`` (the first probe), or after a bound."""
        deadline = time.monotonic() + self.health_wait_s
        while True:
            reply = self.get("/v1/gateway/status")
            reply.expect(200, "GET /v1/gateway/status")
            entries = reply.object("/v1/gateway/status").get("backends")
            if not isinstance(entries, list):
                raise CheckFailed(f"/v1/gateway/status has no backends list: {reply.snippet()}")
            backends = [BackendView.from_status(entry) for entry in entries]
            if all(b.state != "unknown" for b in backends) or time.monotonic() >= deadline:
                return backends
            time.sleep(0.2)


def _served_by(reply: Reply, choice: Choice) -> str:
    name = reply.headers.get("x-backend-used") or choice.backend.name
    return name if choice.backend.real or name != choice.backend.name else f"{name} [fake]"


def sse_chunks(body: bytes) -> tuple[int, str]:
    """The number of chunks and the streamed text; fails unless they end with ``[DONE]``."""
    chunks, text, done = 0, [], False
    for line in body.decode("utf-8", "replace").splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if done:
            raise CheckFailed(f"data after [DONE]: {data[:100]}")
        if data == "[DONE]":
            done = True
            continue
        try:
            event = json.loads(data)
        except ValueError as error:
            raise CheckFailed(f"an event is not JSON: {data[:100]}") from error
        if isinstance(event, dict) and "error" in event:
            raise CheckFailed(f"the stream carried an error: {json.dumps(event['error'])[:200]}")
        choices = event.get("choices") if isinstance(event, dict) else None
        if isinstance(choices, list):
            chunks += 1
            for choice in choices:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                    text.append(delta["content"])
    if not chunks:
        raise CheckFailed("no chunk with choices before the end of the stream")
    if not done:
        raise CheckFailed(f"{chunks} chunks but no data: [DONE] at the end")
    return chunks, "".join(text)


# --- outside the gateway: the contract tests, a gateway of our own, the release --------


def project_python() -> str:
    """The repository's virtualenv interpreter when there is one (it has the gateway)."""
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def run_pytest(timeout_s: float) -> str:
    command = [project_python(), "-m", "pytest", "-q", "-x", "tests", "--ignore=tests/e2e"]
    print(
        f"verify_gateway: running {' '.join(command[1:])} (up to {timeout_s:g} s)", file=sys.stderr
    )
    try:
        result = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise CheckFailed(f"the contract suite did not finish within {timeout_s:g} s") from error
    if result.returncode != 0:
        print(tail(result.stdout + result.stderr), file=sys.stderr)
        raise CheckFailed(f"pytest exited with {result.returncode}: {last_line(result.stdout)}")
    return last_line(result.stdout)


def check_release_manifest(manifest: Path, timeout_s: float) -> str:
    tool = ROOT / "tools" / "freeze_release.py"
    if not tool.exists():
        raise CheckFailed(f"{tool} is missing, so the release manifest cannot be verified")
    if not manifest.exists():
        raise CheckFailed(
            f"{manifest} is missing: freeze the release with `python {tool} --out {manifest}`"
        )
    command = [project_python(), str(tool), "--verify", str(manifest)]
    try:
        result = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise CheckFailed(f"freeze_release.py --verify took longer than {timeout_s:g} s") from error
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        print(tail(output), file=sys.stderr)
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        shown = "; ".join(lines[:5]) + (f"; … (+{len(lines) - 5} lines)" if len(lines) > 5 else "")
        raise CheckFailed(f"{manifest.name} does not match (exit {result.returncode}): {shown}")
    return last_line(output)


# Starts on another port when the chosen one was taken before Caddy bound it.
PORT_ATTEMPTS = 3
PORT_TAKEN = "already in use"


def free_port() -> int:
    """A port nothing holds, below the kernel's ephemeral range where there is room: a
    port from ``bind(0)`` lies inside it, where any outgoing connection may take it as
    its source port before Caddy binds it."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low = int(text.split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    for _ in range(64 if low >= 4096 else 0):
        port = secrets.randbelow(low // 2) + low // 2
        if _port_is_free(port):
            return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_is_free(port: int) -> bool:
    """Nothing holds ``port`` on any address (Caddy listens on all of them)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class OwnGateway:
    """``python -m sidecar up`` in a temporary data directory, on a free loopback port."""

    def __init__(self, config: Path | None, start_timeout_s: float, stop_timeout_s: float) -> None:
        self.config = config
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.data_dir = Path(tempfile.mkdtemp(prefix="verify-gateway-"))
        self.base_url = f"https://127.0.0.1:{free_port()}"
        self.token = secrets.token_urlsafe(32)
        self.log_path = self.data_dir / "up.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def ca_root(self) -> Path:
        return self.data_dir / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def start(self) -> str:
        """Start it and wait for the "is up" line or ``/readyz``, within the bound; on
        another free port when the chosen one was taken in the meantime."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                return self._start()
            except CheckFailed:
                exited = self.process is not None and self.process.poll() is not None
                if attempt == PORT_ATTEMPTS or not exited or PORT_TAKEN not in self.log():
                    raise
            self.base_url = f"https://127.0.0.1:{free_port()}"
            self.log_path.rename(self.log_path.with_name(f"up.{attempt}.log"))
        raise AssertionError("unreachable")

    def _start(self) -> str:
        env = {key: value for key, value in os.environ.items() if key not in _FOREIGN_ENV}
        env.update(
            GATEWAY_ROOT=str(ROOT),
            GATEWAY_DATA_DIR=str(self.data_dir),
            GATEWAY_SITE=self.base_url,
            GATEWAY_BEARER_TOKEN=self.token,
        )
        if self.config is not None:
            env["GATEWAY_CONFIG"] = str(self.config)
        print(f"verify_gateway: starting a gateway at {self.base_url}", file=sys.stderr)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [project_python(), "-m", "sidecar", "up"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so all of it can be stopped
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if UP_LINE in self.log() or self._ready():
                return f"{self.base_url} (data dir {self.data_dir})"
            if self.process.poll() is not None:
                self._show_log()
                raise CheckFailed(f"`python -m sidecar up` exited with {self.process.returncode}")
            time.sleep(0.2)
        self._show_log()
        raise CheckFailed(f"the gateway was not up within {self.start_timeout_s:g} s")

    def http(self, timeout_s: float) -> Http:
        return gateway_http(ssl.create_default_context(cafile=str(self.ca_root)), timeout_s)

    def stop(self) -> str:
        """SIGTERM, then SIGKILL to the whole process group; the data directory goes too."""
        try:
            return self._stop()
        finally:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _stop(self) -> str:
        process = self.process
        if process is None:
            return "never started"
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self._kill_group()
                process.wait()
                raise CheckFailed(
                    f"still running {self.stop_timeout_s:g} s after SIGTERM; killed its group"
                ) from None
        if self._kill_group():
            raise CheckFailed("the gateway exited but left processes running; killed them")
        if process.returncode != 0:
            self._show_log()
            raise CheckFailed(f"`python -m sidecar up` exited with {process.returncode}")
        return "stopped cleanly"

    def _kill_group(self) -> bool:
        """SIGKILL whatever is left in the gateway's process group; True if anything was."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _ready(self) -> bool:
        if not self.ca_root.exists():
            return False
        try:
            reply = self.http(2.0).send("GET", self.base_url + "/readyz")
        except (CheckFailed, ssl.SSLError, OSError):
            return False
        return reply.status == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _show_log(self) -> None:
        print(f"verify_gateway: the gateway's output:\n{tail(self.log(), 40)}", file=sys.stderr)


# --- the command ------------------------------------------------------------------------


def _base_url(text: str) -> str:
    return http_url(text).rstrip("/").removesuffix("/v1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="verify_gateway.py",
        description="Say whether a gateway works: contract tests, then live HTTP checks.",
    )
    parser.add_argument(
        "--base-url",
        type=_base_url,
        help="the gateway to check, e.g. https://127.0.0.1:8443 (default: start one)",
    )
    parser.add_argument("--token", help="its bearer token (default: $GATEWAY_BEARER_TOKEN)")
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--cafile", help="CA to trust, e.g. var/caddy/pki/.../root.crt")
    trust.add_argument("--insecure", action="store_true", help="do not verify TLS")
    parser.add_argument("--skip-pytest", action="store_true", help="skip the contract tests")
    parser.add_argument("--check-images", action="store_true", help="also generate images")
    parser.add_argument(
        "--require-backend", action="store_true", help="fail when no real backend is healthy"
    )
    parser.add_argument(
        "--appliance",
        action="store_true",
        help="--require-backend, and verify the release manifest",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        default=ROOT / "release_manifest.json",
        help="the manifest --appliance verifies (default: release_manifest.json)",
    )
    parser.add_argument("--config", type=Path, help="gateway.yaml for the gateway this tool starts")
    parser.add_argument("--timeout", type=seconds, default=60.0, help="seconds per request")
    parser.add_argument(
        "--start-timeout", type=seconds, default=60.0, help="seconds for a started gateway"
    )
    parser.add_argument(
        "--pytest-timeout", type=seconds, default=900.0, help="seconds for the contract tests"
    )
    parser.add_argument(
        "--health-wait",
        type=seconds,
        default=10.0,
        help="seconds to wait for backends still in their first health check",
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Http | None]:
    """The options, and the HTTP client for ``--base-url``; usage errors exit with 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.appliance:
        args.require_backend = True
    if args.base_url is None:
        given = [flag for flag, value in _base_url_only(args) if value]
        if given:
            parser.error(f"{', '.join(given)} apply to --base-url; a started gateway has its own")
        if args.config is not None and not args.config.is_file():
            parser.error(f"--config {args.config}: no such file")
        return args, None
    if args.config is not None:
        parser.error("--config is for the gateway this tool starts, not for --base-url")
    args.token = args.token or os.environ.get("GATEWAY_BEARER_TOKEN")
    if not args.token:
        parser.error("--base-url needs a bearer token: --token or $GATEWAY_BEARER_TOKEN")
    try:
        context = tls_context(args.insecure, args.cafile)
    except (OSError, ssl.SSLError) as error:
        parser.error(f"--cafile {args.cafile}: {error}")
    return args, gateway_http(context, args.timeout)


def _base_url_only(args: argparse.Namespace) -> list[tuple[str, object]]:
    return [("--token", args.token), ("--cafile", args.cafile), ("--insecure", args.insecure)]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args, http = parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    report = Report()
    if not args.skip_pytest:
        report.run("pytest", lambda: run_pytest(args.pytest_timeout))

    def smoke(http: Http, base_url: str, token: str) -> None:
        Smoke(
            http,
            base_url,
            token,
            require_backend=args.require_backend,
            check_images=args.check_images,
            health_wait_s=args.health_wait,
        ).run(report)

    if http is not None:
        smoke(http, args.base_url, args.token)
    else:
        gateway = OwnGateway(args.config, args.start_timeout, stop_timeout_s=20.0)
        try:
            if report.run("start", gateway.start):
                smoke(gateway.http(args.timeout), gateway.base_url, gateway.token)
        finally:
            report.run("stop", gateway.stop)
    if args.appliance:
        report.run("release-manifest", lambda: check_release_manifest(args.manifest, 300.0))
    return report.finish()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops our gateway


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
