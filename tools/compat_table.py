#!/usr/bin/env python3
"""Which client works with which endpoint of a running gateway, as a markdown table.

Runs a small suite with each client against the gateway and prints what happened, never
what is expected: a cell is ✓ only when the call ran and its answer checked out, ✗ (with
the error, numbered below the table) when it did not, and — where the client has no such
call. Clients: the official ``openai``, ``anthropic`` and ``ollama`` Python libraries
(imported when found; a missing one makes its cells ✗) and the ``curl`` command.

    python tools/compat_table.py --base-url https://127.0.0.1:8443 [--token T]
        [--cafile CA | --insecure] [--chat-model default] [--embedding-model NAME]
        [--timeout 60] [--readme README.md]

The token comes from ``--token`` or ``$GATEWAY_BEARER_TOKEN``; it is given to curl in a
private header file, never on its command line, and never printed. The embeddings model
defaults to the first listed model whose name contains ``embed``. With ``--readme`` the
table also replaces what stands between ``<!-- compat-table:begin -->`` and
``<!-- compat-table:end -->`` in that file.

Exit status: 0 when every cell that ran is ✓, 1 when one is ✗, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path, not run
    sys.path.append(str(Path(__file__).resolve().parent))
from gatewayclient import Http, http_url, reason, seconds, tls_context

CLIENTS = ("openai", "anthropic", "ollama", "curl")
BEGIN, END = "<!-- compat-table:begin -->", "<!-- compat-table:end -->"
USER_AGENT = "local-ai-gateway-compat/1"
PROMPT = "compat_table: reply with one short sentence."
TOOL_PROMPT = 'Call get_weather for Oslo: {"city": "Oslo"}'
MAX_ERROR_CHARS = 240
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


class Failed(Exception):
    """A check ran and the answer was not what the endpoint promises."""


@dataclass
class Target:
    """The gateway under test and what every check needs to reach it."""

    base_url: str
    token: str
    context: ssl.SSLContext | None
    cafile: str | None
    insecure: bool
    timeout: float
    chat_model: str
    embedding_model: str | None
    clients: dict[str, Any] = field(default_factory=dict)
    capable: dict[str, str | None] = field(default_factory=dict)

    def module(self, name: str) -> Any:
        try:
            return importlib.import_module(name)
        except ImportError as error:
            raise Failed(f"the {name} library is not installed") from error

    def verify(self) -> ssl.SSLContext | bool:
        return self.context if self.context is not None else True

    def openai(self) -> Any:
        if "openai" not in self.clients:
            openai = self.module("openai")
            self.clients["openai"] = openai.OpenAI(
                base_url=f"{self.base_url}/v1",
                api_key=self.token,
                max_retries=0,
                timeout=self.timeout,
                http_client=openai.DefaultHttpxClient(verify=self.verify()),
            )
        return self.clients["openai"]

    def anthropic(self) -> Any:
        if "anthropic" not in self.clients:
            anthropic = self.module("anthropic")
            self.clients["anthropic"] = anthropic.Anthropic(
                base_url=self.base_url,
                api_key=self.token,
                max_retries=0,
                timeout=self.timeout,
                http_client=anthropic.DefaultHttpxClient(verify=self.verify()),
            )
        return self.clients["anthropic"]

    def ollama(self) -> Any:
        if "ollama" not in self.clients:
            ollama = self.module("ollama")
            self.clients["ollama"] = ollama.Client(
                host=self.base_url,
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=self.timeout,
                verify=self.verify(),
            )
        return self.clients["ollama"]

    def model_for(self, capability: str) -> str:
        """The first listed model that says it serves ``capability``."""
        if capability not in self.capable:
            models = self.openai().models.list().data
            found = [m.id for m in models if capability in (getattr(m, "capabilities", None) or [])]
            self.capable[capability] = found[0] if found else None
        model = self.capable[capability]
        if model is None:
            raise Failed(f"no listed model serves {capability}")
        return model

    def embedder(self) -> str:
        if self.embedding_model is None:
            raise Failed("no listed model looks like an embeddings model; pass --embedding-model")
        return self.embedding_model

    def close(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                (getattr(client, "close", None) or client._client.close)()


# -- curl -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _header_file(token: str) -> Iterator[str]:
    """The auth header in a file only this user can read, for ``curl -H @file``."""
    with tempfile.TemporaryDirectory(prefix="compat-") as folder:
        path = Path(folder) / "headers"
        path.touch(mode=0o600)
        path.write_text(f"Authorization: Bearer {token}\nx-api-key: {token}\n")
        yield str(path)


def curl(target: Target, method: str, path: str, body: Any = None) -> tuple[int, str]:
    """``curl`` against the gateway: the status and the body text."""
    binary = shutil.which("curl")
    if binary is None:
        raise Failed("curl is not installed")
    with _header_file(target.token) as headers:
        command = [binary, "-sS", "--max-time", f"{target.timeout:g}", "-X", method]
        command += ["-H", f"@{headers}", "-w", "\n%{http_code}"]
        if target.insecure:
            command.append("-k")
        elif target.cafile:
            command += ["--cacert", target.cafile]
        data = None
        if body is not None:
            command += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
            data = json.dumps(body)
        command.append(f"{target.base_url}{path}")
        done = subprocess.run(
            command,
            input=data,
            capture_output=True,
            text=True,
            timeout=target.timeout + 10,
            check=False,
        )
    if done.returncode != 0:
        raise Failed(f"curl exit {done.returncode}: {done.stderr.strip()}")
    text, _, status = done.stdout.rpartition("\n")
    return int(status), text


def curl_json(target: Target, method: str, path: str, body: Any = None) -> Any:
    status, text = curl(target, method, path, body)
    if status != 200:
        raise Failed(f"HTTP {status}: {' '.join(text[:300].split())}")
    try:
        return json.loads(text)
    except ValueError as error:
        raise Failed(f"not JSON: {' '.join(text[:120].split())}") from error


def curl_stream(target: Target, path: str, body: Any, last: str) -> str:
    status, text = curl(target, "POST", path, body)
    if status != 200:
        raise Failed(f"HTTP {status}: {' '.join(text[:300].split())}")
    if last not in text:
        raise Failed(f"the stream has no {last!r}: {' '.join(text[-200:].split())}")
    return text


# -- the checks -----------------------------------------------------------------------------


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise Failed(what)


def _chat_body(target: Target, **extra: Any) -> dict[str, Any]:
    return {
        "model": target.chat_model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 64,
        **extra,
    }


def _openai_tool() -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA},
    }


def openai_models(target: Target) -> None:
    ids = [model.id for model in target.openai().models.list().data]
    _expect(target.chat_model in ids, f"{target.chat_model!r} is not listed")


def openai_retrieve(target: Target) -> None:
    model = target.openai().models.retrieve(target.chat_model)
    _expect(model.id == target.chat_model, f"retrieved {model.id!r}")


def openai_chat(target: Target) -> None:
    reply = target.openai().chat.completions.create(**_chat_body(target))
    _expect(bool(reply.choices[0].message.content), "an empty reply")


def openai_stream(target: Target) -> None:
    stream = target.openai().chat.completions.create(**_chat_body(target), stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    _expect(bool(text), "no text streamed")


def openai_tools(target: Target) -> None:
    reply = target.openai().chat.completions.create(
        **_chat_body(target, tools=[_openai_tool()], tool_choice="required")
        | {"messages": [{"role": "user", "content": TOOL_PROMPT}]}
    )
    calls = reply.choices[0].message.tool_calls or []
    _expect(bool(calls) and calls[0].function.name == "get_weather", "no get_weather call")


def openai_embeddings(target: Target) -> None:
    reply = target.openai().embeddings.create(model=target.embedder(), input=["a", "b"])
    _expect(len(reply.data) == 2 and bool(reply.data[0].embedding), "not two embeddings")


def openai_responses(target: Target) -> None:
    reply = target.openai().responses.create(
        model=target.chat_model, input=PROMPT, max_output_tokens=64
    )
    _expect(bool(reply.output_text), "no output_text")


def openai_responses_stream(target: Target) -> None:
    events = list(
        target.openai().responses.create(
            model=target.chat_model, input=PROMPT, max_output_tokens=64, stream=True
        )
    )
    kinds = [event.type for event in events]
    _expect("response.output_text.delta" in kinds, f"no text deltas in {kinds[:6]}")
    _expect(kinds[-1] == "response.completed", f"ends with {kinds[-1] if kinds else 'nothing'}")


def openai_responses_tools(target: Target) -> None:
    """A function tool round trip, the second turn chained by ``previous_response_id``."""
    client = target.openai()
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    first = client.responses.create(
        model=target.chat_model,
        input="Use get_weather for Paris.",
        tools=[tool],
        tool_choice="required",
    )
    calls = [item for item in first.output if item.type == "function_call"]
    _expect(bool(calls) and calls[0].name == "get_weather", "no get_weather call")
    second = client.responses.create(
        model=target.chat_model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
    )
    _expect(bool(second.output_text), "no answer after the tool result")


def openai_transcription(target: Target) -> None:
    reply = target.openai().audio.transcriptions.create(
        model=target.model_for("transcriptions"), file=("hello.wav", _WAV, "audio/wav")
    )
    _expect(bool(reply.text), "no text")


def openai_speech(target: Target) -> None:
    speech = target.openai().audio.speech
    with speech.with_streaming_response.create(
        model=target.model_for("speech"), voice="alloy", input="hello"
    ) as reply:
        audio = b"".join(reply.iter_bytes())
    _expect(len(audio) > 0, "no audio")


def curl_rerank(target: Target) -> None:
    body = {"model": target.model_for("rerank"), "query": "cats", "documents": ["dogs", "cats"]}
    results = curl_json(target, "POST", "/v1/rerank", body).get("results") or []
    _expect(len(results) == 2 and "relevance_score" in results[0], "not two scored results")


# A tenth of a second of silence: the smallest honest WAV file.
_WAV = (
    b"RIFF"
    + (36 + 1600).to_bytes(4, "little")
    + b"WAVEfmt "
    + (16).to_bytes(4, "little")
    + (1).to_bytes(2, "little")
    + (1).to_bytes(2, "little")
    + (8000).to_bytes(4, "little")
    + (16000).to_bytes(4, "little")
    + (2).to_bytes(2, "little")
    + (16).to_bytes(2, "little")
    + b"data"
    + (1600).to_bytes(4, "little")
    + bytes(1600)
)


def _anthropic_body(target: Target) -> dict[str, Any]:
    return {
        "model": target.chat_model,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": PROMPT}],
    }


def anthropic_messages(target: Target) -> None:
    message = target.anthropic().messages.create(**_anthropic_body(target))
    texts = [block.text for block in message.content if block.type == "text"]
    _expect(bool("".join(texts)), "no text block")
    _expect(message.stop_reason is not None, "no stop_reason")


def anthropic_stream(target: Target) -> None:
    with target.anthropic().messages.stream(**_anthropic_body(target)) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    _expect(bool(text), "no text streamed")
    _expect(final.stop_reason is not None, "no stop_reason")


def anthropic_tools(target: Target) -> None:
    message = target.anthropic().messages.create(
        **_anthropic_body(target)
        | {
            "messages": [{"role": "user", "content": TOOL_PROMPT}],
            "tools": [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}],
            "tool_choice": {"type": "any"},
        }
    )
    uses = [block for block in message.content if block.type == "tool_use"]
    _expect(bool(uses) and uses[0].name == "get_weather", "no get_weather tool_use")
    _expect(message.stop_reason == "tool_use", f"stop_reason {message.stop_reason}")


def anthropic_count(target: Target) -> None:
    body = _anthropic_body(target)
    del body["max_tokens"]
    count = target.anthropic().messages.count_tokens(**body)
    _expect(count.input_tokens > 0, "no input_tokens")


def ollama_tags(target: Target) -> None:
    names = [model.model for model in target.ollama().list().models]
    _expect(target.chat_model in names, f"{target.chat_model!r} is not listed")


def ollama_show(target: Target) -> None:
    shown = target.ollama().show(target.chat_model)
    _expect("completion" in (shown.capabilities or []), f"capabilities {shown.capabilities}")


def ollama_chat(target: Target) -> None:
    reply = target.ollama().chat(
        model=target.chat_model, messages=[{"role": "user", "content": PROMPT}], stream=False
    )
    _expect(bool(reply.message.content) and reply.done is True, "no content or not done")


def ollama_stream(target: Target) -> None:
    parts = list(
        target.ollama().chat(
            model=target.chat_model, messages=[{"role": "user", "content": PROMPT}], stream=True
        )
    )
    _expect(bool("".join(p.message.content or "" for p in parts)), "no text streamed")
    _expect(bool(parts) and parts[-1].done is True, "the last line is not done")


def ollama_embed(target: Target) -> None:
    reply = target.ollama().embed(model=target.embedder(), input=["a", "b"])
    _expect(len(reply.embeddings) == 2 and bool(reply.embeddings[0]), "not two embeddings")


def curl_models(target: Target) -> None:
    ids = [m.get("id") for m in curl_json(target, "GET", "/v1/models").get("data", [])]
    _expect(target.chat_model in ids, f"{target.chat_model!r} is not listed")


def curl_retrieve(target: Target) -> None:
    model = curl_json(target, "GET", f"/v1/models/{target.chat_model}")
    _expect(model.get("id") == target.chat_model, f"retrieved {model.get('id')!r}")


def curl_chat(target: Target) -> None:
    reply = curl_json(target, "POST", "/v1/chat/completions", _chat_body(target))
    _expect(bool(reply["choices"][0]["message"]["content"]), "an empty reply")


def curl_chat_stream(target: Target) -> None:
    curl_stream(target, "/v1/chat/completions", _chat_body(target, stream=True), "data: [DONE]")


def curl_tools(target: Target) -> None:
    body = _chat_body(target, tools=[_openai_tool()], tool_choice="required")
    body["messages"] = [{"role": "user", "content": TOOL_PROMPT}]
    calls = curl_json(target, "POST", "/v1/chat/completions", body)["choices"][0]["message"]
    names = [c["function"]["name"] for c in calls.get("tool_calls") or []]
    _expect(names[:1] == ["get_weather"], "no get_weather call")


def curl_embeddings(target: Target) -> None:
    body = {"model": target.embedder(), "input": ["a", "b"]}
    _expect(len(curl_json(target, "POST", "/v1/embeddings", body)["data"]) == 2, "not two")


def curl_responses(target: Target) -> None:
    body = {"model": target.chat_model, "input": PROMPT, "max_output_tokens": 64}
    reply = curl_json(target, "POST", "/v1/responses", body)
    _expect(reply.get("status") == "completed", f"status {reply.get('status')!r}")


def curl_responses_stream(target: Target) -> None:
    body = {"model": target.chat_model, "input": PROMPT, "max_output_tokens": 64, "stream": True}
    curl_stream(target, "/v1/responses", body, "response.completed")


def curl_messages(target: Target) -> None:
    reply = curl_json(target, "POST", "/v1/messages", _anthropic_body(target))
    _expect(reply.get("type") == "message" and bool(reply.get("content")), "no message")


def curl_messages_stream(target: Target) -> None:
    curl_stream(target, "/v1/messages", _anthropic_body(target) | {"stream": True}, "message_stop")


def curl_count(target: Target) -> None:
    body = _anthropic_body(target)
    del body["max_tokens"]
    count = curl_json(target, "POST", "/v1/messages/count_tokens", body)
    _expect(isinstance(count.get("input_tokens"), int), "no input_tokens")


def curl_tags(target: Target) -> None:
    names = [m.get("name") for m in curl_json(target, "GET", "/api/tags").get("models", [])]
    _expect(target.chat_model in names, f"{target.chat_model!r} is not listed")


def curl_show(target: Target) -> None:
    shown = curl_json(target, "POST", "/api/show", {"model": target.chat_model})
    _expect("capabilities" in shown, "no capabilities")


def curl_ollama_chat(target: Target) -> None:
    body = {
        "model": target.chat_model,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": False,
    }
    reply = curl_json(target, "POST", "/api/chat", body)
    _expect(reply.get("done") is True and bool(reply["message"]["content"]), "not done")


def curl_ollama_stream(target: Target) -> None:
    body = {"model": target.chat_model, "messages": [{"role": "user", "content": PROMPT}]}
    status, text = curl(target, "POST", "/api/chat", body)
    _expect(status == 200, f"HTTP {status}: {' '.join(text[:300].split())}")
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    _expect(len(lines) > 1 and lines[-1].get("done") is True, "the last line is not done")


def curl_embed(target: Target) -> None:
    reply = curl_json(target, "POST", "/api/embed", {"model": target.embedder(), "input": ["a"]})
    _expect(len(reply.get("embeddings") or []) == 1, "no embedding")


Check = Callable[[Target], None]
# (endpoint, {client: check}); the rows of the table, in order.
ROWS: list[tuple[str, dict[str, Check]]] = [
    ("`GET /v1/models`", {"openai": openai_models, "curl": curl_models}),
    ("`GET /v1/models/{id}`", {"openai": openai_retrieve, "curl": curl_retrieve}),
    ("`POST /v1/chat/completions`", {"openai": openai_chat, "curl": curl_chat}),
    ("`POST /v1/chat/completions` stream", {"openai": openai_stream, "curl": curl_chat_stream}),
    ("`POST /v1/chat/completions` tools", {"openai": openai_tools, "curl": curl_tools}),
    ("`POST /v1/embeddings`", {"openai": openai_embeddings, "curl": curl_embeddings}),
    ("`POST /v1/responses`", {"openai": openai_responses, "curl": curl_responses}),
    (
        "`POST /v1/responses` stream",
        {"openai": openai_responses_stream, "curl": curl_responses_stream},
    ),
    ("`POST /v1/responses` tools + `previous_response_id`", {"openai": openai_responses_tools}),
    ("`POST /v1/audio/transcriptions`", {"openai": openai_transcription}),
    ("`POST /v1/audio/speech` stream", {"openai": openai_speech}),
    ("`POST /v1/rerank`", {"curl": curl_rerank}),
    ("`POST /v1/messages`", {"anthropic": anthropic_messages, "curl": curl_messages}),
    ("`POST /v1/messages` stream", {"anthropic": anthropic_stream, "curl": curl_messages_stream}),
    ("`POST /v1/messages` tools", {"anthropic": anthropic_tools}),
    ("`POST /v1/messages/count_tokens`", {"anthropic": anthropic_count, "curl": curl_count}),
    ("`GET /api/tags`", {"ollama": ollama_tags, "curl": curl_tags}),
    ("`POST /api/show`", {"ollama": ollama_show, "curl": curl_show}),
    ("`POST /api/chat`", {"ollama": ollama_chat, "curl": curl_ollama_chat}),
    ("`POST /api/chat` stream", {"ollama": ollama_stream, "curl": curl_ollama_stream}),
    ("`POST /api/embed`", {"ollama": ollama_embed, "curl": curl_embed}),
]


# -- running and rendering ------------------------------------------------------------------


@dataclass
class Result:
    endpoint: str
    client: str
    error: str | None  # None: ✓


def run_check(target: Target, check: Check) -> str | None:
    """None when the check passed, else why not, in one line without the token."""
    try:
        check(target)
    except Exception as error:  # any failure of any client is a ✗ with its reason
        text = f"{type(error).__name__}: {error}" if not isinstance(error, Failed) else str(error)
        text = " ".join(text.replace(target.token, "<token>").split())
        return text[:MAX_ERROR_CHARS] or type(error).__name__
    return None


def run_all(target: Target, clients: Sequence[str] = CLIENTS) -> list[Result]:
    results = []
    for endpoint, checks in ROWS:
        for client in clients:
            if client in checks:
                results.append(Result(endpoint, client, run_check(target, checks[client])))
    return results


def version_of(client: str) -> str:
    if client == "curl":
        binary = shutil.which("curl")
        if binary is None:
            return "curl (not installed)"
        first = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split()
        return " ".join(first[:2]) if len(first) >= 2 else "curl"
    try:
        return f"{client} {importlib.metadata.version(client)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{client} (not installed)"


def render(results: list[Result], clients: Sequence[str] = CLIENTS) -> str:
    """The markdown: the table, then each ✗ with its reason."""
    cells = {(r.endpoint, r.client): r for r in results}
    failures: list[Result] = []
    lines = [
        "| endpoint | " + " | ".join(clients) + " |",
        "|---|" + "---|" * len(clients),
    ]
    for endpoint, _ in ROWS:
        row = []
        for client in clients:
            result = cells.get((endpoint, client))
            if result is None:
                row.append("—")
            elif result.error is None:
                row.append("✓")
            else:
                failures.append(result)
                row.append(f"✗ ({len(failures)})")
        lines.append(f"| {endpoint} | " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "Clients: " + ", ".join(version_of(c) for c in clients) + ". ✓ the call ran and its"
        " answer checked out; ✗ it did not; — the client has no such call."
    )
    if failures:
        lines.append("")
        for number, result in enumerate(failures, 1):
            error = (result.error or "").replace("|", "\\|")
            lines.append(f"{number}. {result.client}, {result.endpoint}: {error}")
    return "\n".join(lines) + "\n"


def write_readme(path: Path, table: str) -> None:
    text = path.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{path} has no {BEGIN} ... {END} block")
    generated = (
        f"{BEGIN}\n<!-- generated by tools/compat_table.py; do not edit by hand -->\n\n{table}"
    )
    path.write_text(text[:start] + generated + text[end:])


def _embedding_model(http: Http, base_url: str, token: str) -> str | None:
    try:
        reply = http.send(
            "GET", f"{base_url}/v1/models", headers={"Authorization": f"Bearer {token}"}
        )
        ids = [m.get("id") for m in reply.object("models").get("data", [])]
    except Exception:  # the table shows the failure in the models row
        return None
    return next((i for i in ids if isinstance(i, str) and "embed" in i.lower()), None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compat_table.py",
        description="Run each client against a gateway and print a client x endpoint table.",
    )
    parser.add_argument(
        "--base-url", type=http_url, required=True, help="e.g. https://127.0.0.1:8443"
    )
    parser.add_argument("--token", help="its bearer token (default: $GATEWAY_BEARER_TOKEN)")
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--cafile", help="CA to trust, e.g. var/caddy/pki/.../root.crt")
    trust.add_argument("--insecure", action="store_true", help="do not verify TLS")
    parser.add_argument("--chat-model", default="default", help="(default: default)")
    parser.add_argument("--embedding-model", help="(default: the first listed model named *embed*)")
    parser.add_argument("--timeout", type=seconds, default=60.0, help="seconds per call")
    parser.add_argument("--readme", type=Path, help="also put the table into this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    token = args.token or os.environ.get("GATEWAY_BEARER_TOKEN")
    if not token:
        print("compat_table.py: --token or $GATEWAY_BEARER_TOKEN is needed", file=sys.stderr)
        return 2
    base_url = args.base_url.rstrip("/")
    https = base_url.startswith("https://")
    try:
        context = tls_context(args.insecure, args.cafile) if https else None
    except (OSError, ssl.SSLError) as error:
        print(f"compat_table.py: --cafile {args.cafile}: {reason(error)}", file=sys.stderr)
        return 2
    http = Http(context, args.timeout, user_agent=USER_AGENT, follow_redirects=False)
    target = Target(
        base_url=base_url,
        token=token,
        context=context,
        cafile=args.cafile,
        insecure=args.insecure,
        timeout=args.timeout,
        chat_model=args.chat_model,
        embedding_model=args.embedding_model or _embedding_model(http, base_url, token),
    )
    try:
        results = run_all(target)
    finally:
        target.close()
    table = render(results)
    print(table, end="")
    if args.readme is not None:
        try:
            write_readme(args.readme, table)
        except (OSError, ValueError) as error:
            print(f"compat_table.py: {error}", file=sys.stderr)
            return 2
    return 1 if any(result.error for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
