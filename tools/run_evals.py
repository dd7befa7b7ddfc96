#!/usr/bin/env python3
"""Run eval cases against a running gateway and record what it answered.

Standard library only (with its sibling ``gatewayclient.py``), so it runs from cron or a
systemd timer on any host with Python 3.11. Each case in a JSONL file sends one request to
the gateway's chat, tool or agent endpoint and checks the answer with assertions; the run
writes a JSON report, a JUnit XML file for CI, and appends one line to a history file so
pass rates can be followed over time.

    GATEWAY_BEARER_TOKEN=... python3 tools/run_evals.py \\
        --base-url https://127.0.0.1:8443 --cafile var/caddy/pki/authorities/local/root.crt \\
        [--cases tools/evals/golden.jsonl] [--tag smoke] [--repeat 3]

A case is one JSON object per line::

    {"id": "chat-plain", "tags": ["smoke", "chat"], "endpoint": "chat",
     "request": {"model": "default", "messages": [{"role": "user", "content": "hi"}]},
     "assertions": [{"contains": "Mock reply to"}, {"latency_ms": 5000}]}

``endpoint`` is ``chat`` (the request is a chat completion body; with ``"stream": true``
the text is assembled from the SSE deltas and the time to first token is measured),
``tools`` (``{"tool": name, "arguments": {...}}``) or ``agent`` (a ``/v1/agent/run``
body). The text assertions (``equals``, ``contains``, ``icontains``, ``not_contains``,
``regex``, ``is_json`` with optional ``required_keys``) read the output text: the
assistant message for chat, the JSON of ``result`` (or of ``error`` when the call
failed) for tools, ``output`` for agents, and the error message of an error response.
``json_path`` (``{"path": "choices[0].message.role", "equals": "assistant"}``) reads
the response JSON (for a stream, the completion assembled from its chunks). ``status``,
``finish_reason`` (an agent's ``stop_reason``), ``tool_call`` (``{"name": ...,
"arguments_subset": {...}}`` against the first tool call), ``latency_ms`` and
``ttft_ms`` (streams only) are budgets and facts of the exchange. A case without a
``status`` assertion fails on any HTTP error status.

Prints ``PASS id`` or ``FAIL id: why`` per case run and ``N passed, M failed``; exits 0
when every case passed, 1 when one failed, 2 on a usage or configuration error (no
token, unreadable or invalid cases, a gateway that does not answer ``/readyz``).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import ssl
import statistics
import sys
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path, not run
    sys.path.append(str(Path(__file__).resolve().parent))
from gatewayclient import MAX_BODY_BYTES, Http, http_url, reason, seconds, tls_context

EXIT_PASSED, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
REPORT_SCHEMA = 1
USER_AGENT = "local-ai-gateway-run-evals/1"
EXCERPT_CHARS = 300
DEFAULT_CASES = Path(__file__).resolve().parent / "evals" / "golden.jsonl"

ENDPOINTS = ("chat", "tools", "agent")
CASE_KEYS = frozenset({"id", "tags", "endpoint", "request", "assertions", "description"})
TEXT_ASSERTIONS = frozenset({"equals", "contains", "icontains", "not_contains", "regex"})
ASSERTIONS = TEXT_ASSERTIONS | {
    "is_json",
    "json_path",
    "status",
    "finish_reason",
    "tool_call",
    "latency_ms",
    "ttft_ms",
}

_PATH_STEP = re.compile(r"(\.?)([^.\[\]]+)|\[(-?\d+)\]")


class ConfigError(Exception):
    """A usage or configuration problem: the run cannot start (exit 2)."""


@dataclass(frozen=True)
class Assertion:
    kind: str
    value: Any
    spec: dict[str, Any]  # as written in the case file, for the report
    required_keys: tuple[str, ...] = ()
    path: tuple[str | int, ...] = ()
    pattern: re.Pattern[str] | None = None


@dataclass(frozen=True)
class EvalCase:
    id: str
    tags: tuple[str, ...]
    endpoint: str
    request: dict[str, Any]
    assertions: tuple[Assertion, ...]
    source: str  # file:line

    @property
    def streaming(self) -> bool:
        return self.endpoint == "chat" and self.request.get("stream") is True

    @property
    def request_hash(self) -> str:
        canonical = json.dumps(self.request, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Exchange:
    """One request and what came back; ``status`` is None when no HTTP answer arrived."""

    status: int | None = None
    document: Any = None  # the response JSON; for a stream, the completion it assembles to
    text: str = ""  # what the text assertions read
    latency_ms: float | None = None
    ttft_ms: float | None = None
    problem: str | None = None  # transport failure, unreadable body or a stream error event


@dataclass
class CaseResult:
    case: EvalCase
    repeat: int
    exchange: Exchange
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_report(self) -> dict[str, Any]:
        return {
            "id": self.case.id,
            "tags": list(self.case.tags),
            "endpoint": self.case.endpoint,
            "repeat": self.repeat,
            "passed": self.passed,
            "failures": self.failures,
            "latency_ms": _rounded(self.exchange.latency_ms),
            "ttft_ms": _rounded(self.exchange.ttft_ms),
            "status": self.exchange.status,
            "request_hash": self.case.request_hash,
            "output": _excerpt(self.exchange.text),
        }


# --- loading cases -------------------------------------------------------------------------


def load_cases(path: Path) -> list[EvalCase]:
    """Every case in ``path``; any problem is a ``ConfigError`` naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read the cases: {reason}") from error
    cases: list[EvalCase] = []
    first_seen: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as error:
            message = f"{where}: not valid JSON: {error.msg} (column {error.colno})"
            raise ConfigError(message) from None
        case = parse_case(raw, where)
        if case.id in first_seen:
            raise ConfigError(f"{where}: duplicate id {case.id!r} (first at {first_seen[case.id]})")
        first_seen[case.id] = where
        cases.append(case)
    if not cases:
        raise ConfigError(f"{path}: no cases")
    return cases


def parse_case(raw: Any, where: str) -> EvalCase:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a case must be a JSON object")
    unknown = sorted(set(raw) - CASE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown case field(s): {', '.join(unknown)}")
    case_id = raw.get("id")
    if not isinstance(case_id, str) or not case_id.strip():
        raise ConfigError(f"{where}: missing 'id' (a non-empty string)")
    source, where = where, f"{where} ({case_id})"
    tags = raw.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) and tag for tag in tags):
        raise ConfigError(f"{where}: 'tags' must be a list of non-empty strings")
    endpoint = raw.get("endpoint")
    if endpoint not in ENDPOINTS:
        raise ConfigError(f"{where}: unknown endpoint {endpoint!r}; use one of {ENDPOINTS}")
    request = _checked_request(raw.get("request"), endpoint, where)
    assertions = raw.get("assertions", [])
    if not isinstance(assertions, list):
        raise ConfigError(f"{where}: 'assertions' must be a list of objects")
    streaming = endpoint == "chat" and request.get("stream") is True
    parsed = tuple(
        parse_assertion(spec, endpoint, streaming, f"{where}: assertion {index}")
        for index, spec in enumerate(assertions, start=1)
    )
    return EvalCase(case_id, tuple(tags), endpoint, request, parsed, source)


def _checked_request(request: Any, endpoint: str, where: str) -> dict[str, Any]:
    if not isinstance(request, dict):
        raise ConfigError(f"{where}: 'request' must be a JSON object")
    if endpoint == "tools":
        unknown = sorted(set(request) - {"tool", "arguments"})
        if unknown:
            raise ConfigError(f"{where}: unknown tools request field(s): {', '.join(unknown)}")
        if not isinstance(request.get("tool"), str) or not request["tool"]:
            raise ConfigError(f"{where}: a tools request needs 'tool' (the tool's name)")
        if not isinstance(request.get("arguments", {}), dict):
            raise ConfigError(f"{where}: a tools request's 'arguments' must be an object")
    if endpoint == "chat" and not isinstance(request.get("stream", False), bool):
        raise ConfigError(f"{where}: 'stream' must be true or false")
    return request


def parse_assertion(spec: Any, endpoint: str, streaming: bool, where: str) -> Assertion:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: an assertion must be a JSON object")
    kinds = [key for key in spec if key in ASSERTIONS]
    extra = set(spec) - ASSERTIONS - ({"required_keys"} if "is_json" in spec else set())
    if len(kinds) != 1 or extra:
        names = ", ".join(sorted(spec)) or "nothing"
        raise ConfigError(
            f"{where}: unknown assertion ({names}); use one of {', '.join(sorted(ASSERTIONS))}"
        )
    kind = kinds[0]
    if kind in TEXT_ASSERTIONS:
        return _text_assertion(kind, spec, where)
    if kind == "is_json":
        return _is_json_assertion(spec, where)
    if kind == "json_path":
        return _json_path_assertion(spec, where)
    if kind == "tool_call":
        return _tool_call_assertion(spec, endpoint, where)
    value = spec[kind]
    if kind == "status":
        if not _is_int(value) or not 100 <= value <= 599:
            raise ConfigError(f"{where}: 'status' needs an HTTP status code")
    elif kind == "finish_reason":
        if endpoint == "tools" or not isinstance(value, str):
            raise ConfigError(f"{where}: 'finish_reason' needs a string, on chat or agent cases")
    elif not _is_number(value) or value <= 0:
        raise ConfigError(f"{where}: '{kind}' needs a positive number of milliseconds")
    elif kind == "ttft_ms" and not streaming:
        raise ConfigError(f"{where}: 'ttft_ms' needs a chat case with \"stream\": true")
    return Assertion(kind, value, spec)


def _text_assertion(kind: str, spec: dict[str, Any], where: str) -> Assertion:
    value = spec[kind]
    if not isinstance(value, str):
        raise ConfigError(f"{where}: '{kind}' needs a string")
    if kind != "regex":
        return Assertion(kind, value, spec)
    try:
        return Assertion(kind, value, spec, pattern=re.compile(value))
    except re.error as error:
        raise ConfigError(f"{where}: bad regex {value!r}: {error}") from error


def _is_json_assertion(spec: dict[str, Any], where: str) -> Assertion:
    value = spec["is_json"]
    keys = spec.get("required_keys", []) if value is True else None
    if isinstance(value, dict) and set(value) <= {"required_keys"}:
        keys = value.get("required_keys", [])
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise ConfigError(f"{where}: 'is_json' is true (with optional \"required_keys\": [names])")
    return Assertion("is_json", True, spec, required_keys=tuple(keys))


def _json_path_assertion(spec: dict[str, Any], where: str) -> Assertion:
    value = spec["json_path"]
    if not isinstance(value, dict) or set(value) != {"path", "equals"}:
        raise ConfigError(f'{where}: \'json_path\' is {{"path": "a.b[0]", "equals": ...}}')
    return Assertion("json_path", value["equals"], spec, path=parse_json_path(value["path"], where))


def _tool_call_assertion(spec: dict[str, Any], endpoint: str, where: str) -> Assertion:
    value = spec["tool_call"]
    if endpoint != "chat" or not isinstance(value, dict):
        raise ConfigError(f"{where}: 'tool_call' is an object, on chat cases")
    if not value or set(value) - {"name", "arguments_subset"}:
        raise ConfigError(f"{where}: 'tool_call' takes 'name' and/or 'arguments_subset'")
    if not isinstance(value.get("name", ""), str):
        raise ConfigError(f"{where}: the tool_call 'name' must be a string")
    if not isinstance(value.get("arguments_subset", {}), dict):
        raise ConfigError(f"{where}: 'arguments_subset' must be an object")
    return Assertion("tool_call", value, spec)


def parse_json_path(path: Any, where: str) -> tuple[str | int, ...]:
    """``a.b[0].c`` (optionally ``$.a...``) as steps: keys are strings, indexes ints."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}: 'path' must be a non-empty string")
    text = path[1:] if path.startswith("$") else path
    steps: list[str | int] = []
    position = 0
    while position < len(text):
        match = _PATH_STEP.match(text, position)
        if match is None or (match.group(2) and position > 0 and not match.group(1)):
            raise ConfigError(f"{where}: bad path {path!r} at character {position + 1}")
        steps.append(match.group(2) if match.group(2) else int(match.group(3)))
        position = match.end()
    return tuple(steps)


def select(cases: list[EvalCase], tags: Sequence[str]) -> list[EvalCase]:
    if not tags:
        return cases
    chosen = [case for case in cases if set(case.tags) & set(tags)]
    if not chosen:
        raise ConfigError(f"no case has any of the tags {', '.join(tags)}")
    return chosen


# --- talking to the gateway ---------------------------------------------------------------


class Gateway:
    """The gateway's HTTP API with the operator's token and TLS settings (``gatewayclient``:
    no proxy, which would change what is measured, and no redirect followed)."""

    def __init__(self, base_url: str, token: str, context: ssl.SSLContext, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.http = Http(context, timeout, user_agent=USER_AGENT, follow_redirects=False)

    def open(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        """The response (an ``HTTPError`` is one too); transport failures raise ``OSError``."""
        headers = {"Accept": "application/json, text/event-stream"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        return self.http.open(method, self.base_url + path, payload=body, headers=headers)

    def get_json(self, path: str, *, auth: bool = True) -> tuple[int, Any]:
        with self.open("GET", path, auth=auth) as response:
            status, raw = response.status, response.read(MAX_BODY_BYTES)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, None

    def identify(self) -> tuple[dict[str, Any], list[str]]:
        """The gateway's ``/readyz`` facts and its model ids; ``ConfigError`` if unusable."""
        where = f"{self.base_url}/readyz"
        try:
            status, ready = self.get_json("/readyz", auth=False)
        except (OSError, http.client.HTTPException) as error:
            raise ConfigError(f"gateway unreachable at {where}: {reason(error)}") from error
        if not isinstance(ready, dict):
            raise ConfigError(f"{where} answered HTTP {status} without JSON: is it the gateway?")
        gateway = {"version": ready.get("version"), "status": ready.get("status")}
        try:
            status, listing = self.get_json("/v1/models")
        except (OSError, http.client.HTTPException) as error:
            raise ConfigError(f"{self.base_url}/v1/models: {reason(error)}") from error
        if status in (401, 403):
            raise ConfigError(f"the gateway refused the token (HTTP {status} on /v1/models)")
        data = listing.get("data") if isinstance(listing, dict) else None
        if status != 200 or not isinstance(data, list):
            print(f"run_evals: warning: /v1/models answered HTTP {status}", file=sys.stderr)
            return gateway, []
        return gateway, [str(model.get("id")) for model in data if isinstance(model, dict)]

    def exchange(self, case: EvalCase) -> Exchange:
        path, body = _route(case)
        started = time.perf_counter()
        exchange = Exchange()
        try:
            with self.open("POST", path, body) as response:
                exchange.status = response.status
                if response.headers.get_content_type() == "text/event-stream":
                    _read_stream(response, started, exchange)
                else:
                    _read_document(response.read(MAX_BODY_BYTES), exchange)
        except (OSError, http.client.HTTPException) as error:
            stage = "no answer" if exchange.status is None else "the response was cut off"
            exchange.problem = f"{stage}: {reason(error)}"
        exchange.latency_ms = (time.perf_counter() - started) * 1000
        exchange.text = output_text(case.endpoint, exchange)
        return exchange


def _route(case: EvalCase) -> tuple[str, dict[str, Any]]:
    if case.endpoint == "tools":
        name = urllib.parse.quote(case.request["tool"], safe="")
        return f"/v1/tools/{name}", {"arguments": case.request.get("arguments", {})}
    if case.endpoint == "agent":
        return "/v1/agent/run", case.request
    return "/v1/chat/completions", case.request


def _read_document(raw: bytes, exchange: Exchange) -> None:
    try:
        exchange.document = json.loads(raw)
    except ValueError:
        exchange.problem = f"the body is not JSON: {_excerpt(raw.decode('utf-8', 'replace'))!r}"


def _read_stream(response: Any, started: float, exchange: Exchange) -> None:
    """Assemble a chat completion from SSE chunks, timing the first content or tool call."""
    completion = StreamedCompletion()
    data: list[str] = []
    try:
        for raw in response:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line:
                name, _, value = line.partition(":")
                if name == "data":
                    data.append(value[1:] if value.startswith(" ") else value)
                continue
            if data and completion.add("\n".join(data), started):
                break
            data = []
        else:
            if not (data and completion.add("\n".join(data), started)):
                completion.problems.append("the stream ended without data: [DONE]")
    finally:  # a stream cut off by a transport error still shows what had arrived
        exchange.document = completion.document()
        exchange.ttft_ms = completion.ttft_ms
        if completion.problems:
            exchange.problem = "; ".join(completion.problems)


class StreamedCompletion:
    """What the SSE chunks of a chat completion add up to (choice 0)."""

    def __init__(self) -> None:
        self.first: dict[str, Any] = {}
        self.content: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: Any = None
        self.ttft_ms: float | None = None
        self.problems: list[str] = []

    def add(self, data: str, started: float) -> bool:
        """Take one event's data; True at ``[DONE]``."""
        if data.strip() == "[DONE]":
            return True
        try:
            event = json.loads(data)
        except ValueError:
            self.problems.append(f"an event is not JSON: {_excerpt(data)!r}")
            return False
        if not isinstance(event, dict):
            return False
        if isinstance(event.get("error"), dict):
            message = event["error"].get("message")
            self.problems.append(f"the stream ended with an error event: {message}")
            return False
        self.first = self.first or event
        if event.get("usage"):
            self.usage = event["usage"]
        for choice in event.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._add_choice(choice, started)
        return False

    def _add_choice(self, choice: dict[str, Any], started: float) -> None:
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        content = delta.get("content")
        if isinstance(content, str) and content:
            self.content.append(content)
            self._first_token(started)
        fragments = delta.get("tool_calls")
        for fragment in fragments if isinstance(fragments, list) else []:
            if isinstance(fragment, dict):
                self._add_tool_call(fragment)
                self._first_token(started)

    def _add_tool_call(self, fragment: dict[str, Any]) -> None:
        index = fragment.get("index", 0)
        call = self.tool_calls.setdefault(
            index if _is_int(index) else 0,
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        )
        call["id"] = fragment.get("id") or call["id"]
        call["type"] = fragment.get("type") or call["type"]
        function = fragment.get("function")
        if not isinstance(function, dict):
            return
        name, arguments = function.get("name"), function.get("arguments")
        if isinstance(name, str) and name != call["function"]["name"]:
            call["function"]["name"] += name  # some servers repeat the name in every fragment
        if isinstance(arguments, str):
            call["function"]["arguments"] += arguments

    def _first_token(self, started: float) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - started) * 1000

    def document(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content)}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[index] for index in sorted(self.tool_calls)]
            message["content"] = message["content"] or None
        return {
            "id": self.first.get("id"),
            "object": "chat.completion",
            "model": self.first.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            "usage": self.usage,
        }


def output_text(endpoint: str, exchange: Exchange) -> str:
    """The text the text assertions read (see the module docstring)."""
    document = exchange.document
    if not isinstance(document, dict):
        return ""
    error = document.get("error")
    if exchange.status is not None and exchange.status >= 400 and isinstance(error, dict):
        return str(error.get("message") or "")
    if endpoint == "tools":
        key = "result" if "result" in document else "error"
        return json.dumps(document.get(key)) if key in document else ""
    if endpoint == "agent":
        output = document.get("output")
        return output if isinstance(output, str) else "" if output is None else json.dumps(output)
    content = _at(document, ("choices", 0, "message", "content"))
    return content if isinstance(content, str) else ""


# --- checking -----------------------------------------------------------------------------


def evaluate(gateway: Gateway, case: EvalCase, repeat: int) -> CaseResult:
    exchange = gateway.exchange(case)
    result = CaseResult(case, repeat, exchange)
    if exchange.status is None:
        result.failures.append(_failure("request", None, exchange.problem or "no answer"))
        return result
    if exchange.problem:
        result.failures.append(_failure("response", None, exchange.problem))
    if exchange.status >= 400 and not any(a.kind == "status" for a in case.assertions):
        why = f"HTTP {exchange.status}: {_excerpt(exchange.text)}"
        result.failures.append(_failure("status", {"status": "2xx or 3xx"}, why))
    for assertion in case.assertions:
        why = check(assertion, case.endpoint, exchange)
        if why is not None:
            result.failures.append(_failure(assertion.kind, assertion.spec, why))
    return result


def check(assertion: Assertion, endpoint: str, exchange: Exchange) -> str | None:
    """None when the assertion holds, else why it does not."""
    kind, value, text = assertion.kind, assertion.value, exchange.text
    if kind == "equals":
        return None if text == value else f"expected {value!r}, got {_excerpt(text)!r}"
    if kind == "contains":
        return None if value in text else f"{value!r} not in {_excerpt(text)!r}"
    if kind == "icontains":
        found = value.casefold() in text.casefold()
        return None if found else f"{value!r} (any case) not in {_excerpt(text)!r}"
    if kind == "not_contains":
        return None if value not in text else f"{value!r} found in {_excerpt(text)!r}"
    if kind == "regex" and assertion.pattern is not None:
        found = assertion.pattern.search(text)
        return None if found else f"/{value}/ does not match {_excerpt(text)!r}"
    if kind == "is_json":
        return _check_json_text(text, assertion.required_keys)
    if kind == "json_path":
        return _check_json_path(exchange.document, assertion)
    if kind == "status":
        return None if exchange.status == value else f"expected {value}, got {exchange.status}"
    if kind == "finish_reason":
        path = ("stop_reason",) if endpoint == "agent" else ("choices", 0, "finish_reason")
        actual = _at(exchange.document, path)
        return None if actual == value else f"expected {value!r}, got {actual!r}"
    if kind == "tool_call":
        return _check_tool_call(exchange.document, value)
    measured = exchange.latency_ms if kind == "latency_ms" else exchange.ttft_ms
    if measured is None:
        return "no content or tool call arrived"
    return None if measured <= value else f"{measured:.1f} ms over the budget of {value} ms"


def _check_json_text(text: str, required_keys: tuple[str, ...]) -> str | None:
    try:
        parsed = json.loads(text)
    except ValueError as error:
        return f"output is not JSON ({error}): {_excerpt(text)!r}"
    if not required_keys:
        return None
    if not isinstance(parsed, dict):
        return f"output is JSON but not an object: {_excerpt(text)!r}"
    missing = [key for key in required_keys if key not in parsed]
    return f"missing key(s): {', '.join(missing)}" if missing else None


def _check_json_path(document: Any, assertion: Assertion) -> str | None:
    path_text = assertion.spec["json_path"]["path"]
    try:
        actual = _at(document, assertion.path, strict=True)
    except LookupError:
        return f"{path_text}: not in the response"
    if json_equal(actual, assertion.value):
        return None
    return f"{path_text}: expected {json.dumps(assertion.value)}, got {json.dumps(actual)}"


def _check_tool_call(document: Any, expected: dict[str, Any]) -> str | None:
    call = _at(document, ("choices", 0, "message", "tool_calls", 0))
    if not isinstance(call, dict):
        return "the reply has no tool call"
    function = call.get("function")
    if not isinstance(function, dict):
        return "the tool call has no function"
    name = function.get("name")
    if "name" in expected and name != expected["name"]:
        return f"expected a call to {expected['name']!r}, got {name!r}"
    subset = expected.get("arguments_subset")
    if subset is None:
        return None
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except (TypeError, ValueError):
        return f"the arguments are not JSON: {_excerpt(str(function.get('arguments')))!r}"
    if json_subset(subset, arguments):
        return None
    return f"arguments {json.dumps(arguments)} do not contain {json.dumps(subset)}"


def json_equal(left: Any, right: Any) -> bool:
    """JSON equality: ``1 == 1.0``, but ``true`` is not ``1``."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if _is_number(left) and _is_number(right):
        return left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    return type(left) is type(right) and left == right


def json_subset(expected: Any, actual: Any) -> bool:
    """Every key of ``expected`` (recursively, for objects) is in ``actual`` with its value."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and json_subset(value, actual[key]) for key, value in expected.items()
        )
    return json_equal(expected, actual)


def _at(document: Any, path: Iterable[str | int], *, strict: bool = False) -> Any:
    """The value at ``path``; None when it is not there (``LookupError`` when ``strict``)."""
    current = document
    for step in path:
        if isinstance(step, int):
            present = isinstance(current, list) and -len(current) <= step < len(current)
        else:
            present = isinstance(current, dict) and step in current
        if not present:
            if strict:
                raise LookupError(step)
            return None
        current = current[step]
    return current


def _failure(assertion: str, spec: Any, message: str) -> dict[str, Any]:
    return {"assertion": assertion, "expected": spec, "message": message}


# --- outputs ------------------------------------------------------------------------------


@dataclass
class EvalRun:
    base_url: str
    cases_path: Path
    tags: tuple[str, ...]
    repeat: int
    gateway: dict[str, Any]
    models: list[str]
    started: str
    finished: str = ""
    results: list[CaseResult] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(1 for result in self.results if result.passed)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed

    def totals(self) -> dict[str, Any]:
        total = len(self.results)
        return {
            "cases": total,
            "passed": self.passed,
            "failed": self.failed,
            "pass_rate": round(self.passed / total, 4) if total else 0.0,
        }

    def report(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "base_url": self.base_url,
            "gateway": self.gateway,
            "models": self.models,
            "cases_file": str(self.cases_path),
            "tags": list(self.tags),
            "repeat": self.repeat,
            "started": self.started,
            "finished": self.finished,
            "totals": self.totals(),
            "latency_ms": self.latency_summary(),
            "results": [result.as_report() for result in self.results],
        }

    def latency_summary(self) -> dict[str, dict[str, float]]:
        """Per case id over its repeats: min, median and max latency."""
        by_case: dict[str, list[float]] = {}
        for result in self.results:
            if result.exchange.latency_ms is not None:
                by_case.setdefault(result.case.id, []).append(result.exchange.latency_ms)
        return {
            case_id: {
                "min": round(min(values), 3),
                "median": round(statistics.median(values), 3),
                "max": round(max(values), 3),
            }
            for case_id, values in by_case.items()
        }

    def junit(self) -> ET.ElementTree:
        seconds = sum(result.exchange.latency_ms or 0.0 for result in self.results) / 1000
        suites = ET.Element("testsuites")
        suite = ET.SubElement(
            suites,
            "testsuite",
            name="gateway-evals",
            tests=str(len(self.results)),
            failures=str(self.failed),
            errors="0",
            skipped="0",
            time=f"{seconds:.3f}",
            timestamp=self.started,
        )
        properties = ET.SubElement(suite, "properties")
        for name, value in (
            ("base_url", self.base_url),
            ("gateway_version", str(self.gateway.get("version"))),
            ("cases_file", str(self.cases_path)),
        ):
            ET.SubElement(properties, "property", name=name, value=value)
        for result in self.results:
            name = result.case.id if self.repeat == 1 else f"{result.case.id} [{result.repeat}]"
            testcase = ET.SubElement(
                suite,
                "testcase",
                classname=f"evals.{result.case.endpoint}",
                name=name,
                time=f"{(result.exchange.latency_ms or 0.0) / 1000:.3f}",
            )
            for failure in result.failures:
                element = ET.SubElement(
                    testcase,
                    "failure",
                    type=failure["assertion"],
                    message=f"{failure['assertion']}: {failure['message']}",
                )
                element.text = json.dumps(failure, indent=2)
        ET.indent(suites)
        return ET.ElementTree(suites)

    def history_line(self, report_path: Path) -> str:
        line = {
            "ts": self.finished,
            "started": self.started,
            **self.totals(),
            "gateway_version": self.gateway.get("version"),
            "base_url": self.base_url,
            "cases_file": str(self.cases_path),
            "tags": list(self.tags),
            "repeat": self.repeat,
            "report": str(report_path),
        }
        return json.dumps(line, sort_keys=True) + "\n"


def write_outputs(run: EvalRun, report: Path, junit: Path, history: Path) -> None:
    """Report and JUnit replaced atomically; the history line appended in one write."""
    _write_atomic(report, json.dumps(run.report(), indent=2) + "\n")
    tree = run.junit()
    junit_text = ET.tostring(tree.getroot(), encoding="unicode", xml_declaration=True)
    _write_atomic(junit, junit_text + "\n")
    with history.open("a", encoding="utf-8") as stream:
        stream.write(run.history_line(report))


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _print_result(result: CaseResult, repeat: int, quiet: bool) -> None:
    if quiet and result.passed:
        return
    label = result.case.id if repeat == 1 else f"{result.case.id} [{result.repeat}]"
    timing = f"{result.exchange.latency_ms or 0.0:.0f} ms"
    if result.exchange.ttft_ms is not None:
        timing += f", ttft {result.exchange.ttft_ms:.0f} ms"
    if result.passed:
        print(f"PASS {label} ({timing})", flush=True)
        return
    reasons = "; ".join(f"{f['assertion']}: {f['message']}" for f in result.failures)
    print(f"FAIL {label} ({timing}): {reasons}", flush=True)


# --- command line -------------------------------------------------------------------------


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run eval cases against a gateway; write a JSON report, JUnit XML and a "
        "history line. Exit 0 all passed, 1 a case failed, 2 usage or configuration error."
    )
    parser.add_argument(
        "--cases", type=Path, default=DEFAULT_CASES, help="JSONL cases (default: %(default)s)"
    )
    parser.add_argument(
        "--tag",
        action="append",
        default=[],
        help="run only cases with this tag (repeatable: cases with any of them)",
    )
    parser.add_argument("--repeat", type=_count, default=1, help="run the selection N times")
    parser.add_argument(
        "--base-url",
        type=http_url,
        default="https://127.0.0.1:8443",
        help="the gateway, through Caddy (default: %(default)s)",
    )
    parser.add_argument("--token", help="the bearer token (default: $GATEWAY_BEARER_TOKEN)")
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--insecure", action="store_true", help="skip TLS verification")
    trust.add_argument("--cafile", help="CA bundle to trust (e.g. Caddy's local root.crt)")
    parser.add_argument(
        "--timeout", type=seconds, default=300.0, help="seconds per request (%(default)s)"
    )
    for name, default, what in (
        ("--report", "var/evals/report.json", "the JSON report"),
        ("--junit", "var/evals/junit.xml", "the JUnit XML"),
        ("--history", "var/evals/history.jsonl", "appends one line per run"),
    ):
        parser.add_argument(name, type=Path, default=Path(default), help=f"{what} (%(default)s)")
    parser.add_argument("--quiet", action="store_true", help="print only failures and the summary")
    return parser


def checked_tls_context(insecure: bool, cafile: str | None) -> ssl.SSLContext:
    try:
        return tls_context(insecure, cafile)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"--cafile {cafile}: {reason(error)}") from error


def run(args: argparse.Namespace) -> int:
    token = (args.token or os.environ.get("GATEWAY_BEARER_TOKEN") or "").strip()
    if not token:
        raise ConfigError("no bearer token: pass --token or set GATEWAY_BEARER_TOKEN")
    cases = select(load_cases(args.cases), args.tag)
    for output in (args.report, args.junit, args.history):
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"{output}: cannot create its directory: {reason(error)}") from error
    gateway = Gateway(
        args.base_url, token, checked_tls_context(args.insecure, args.cafile), args.timeout
    )
    identity, models = gateway.identify()
    evals = EvalRun(
        args.base_url, args.cases, tuple(args.tag), args.repeat, identity, models, started=_now()
    )
    if not args.quiet:
        print(
            f"gateway {identity.get('version')} ({identity.get('status')}) at {args.base_url}: "
            f"{len(cases)} case(s) x {args.repeat}",
            flush=True,
        )
    for repeat in range(args.repeat):
        for case in cases:
            result = evaluate(gateway, case, repeat)
            evals.results.append(result)
            _print_result(result, args.repeat, args.quiet)
    evals.finished = _now()
    try:
        write_outputs(evals, args.report, args.junit, args.history)
    except OSError as error:
        raise ConfigError(f"cannot write the outputs: {reason(error)}") from error
    print(f"{evals.passed} passed, {evals.failed} failed", flush=True)
    if not args.quiet:
        print(f"report {args.report}, junit {args.junit}, history {args.history}", flush=True)
    return EXIT_FAILED if evals.failed else EXIT_PASSED


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_request:  # --help, or a usage error argparse has printed
        return exit_request.code if isinstance(exit_request.code, int) else EXIT_CONFIG
    try:
        return run(args)
    except ConfigError as error:
        print(f"run_evals: {error}", file=sys.stderr, flush=True)
        return EXIT_CONFIG


# --- small helpers ------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


if __name__ == "__main__":
    sys.exit(main())
