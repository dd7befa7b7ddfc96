"""``tools/compat_table.py`` against a real gateway: ``gateway serve`` and the fake backend
as subprocesses on loopback, the script as a third, its table read back.

Every cell of every face (OpenAI with the Responses API, audio and rerank; Anthropic;
Ollama) must be ✓; a cell for an endpoint the gateway does not serve must
be ✗ with its reason, which the test shows by asking for a model nobody serves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import TOKEN, free_port, wait_listening

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "compat_table.py"
CLIENTS = ("openai", "anthropic", "ollama", "curl")
# Rows that must be all ✓ on this gateway, and which clients have a cell there.
MUST_PASS = {
    "`GET /v1/models`": ("openai", "curl"),
    "`POST /v1/chat/completions`": ("openai", "curl"),
    "`POST /v1/chat/completions` stream": ("openai", "curl"),
    "`POST /v1/chat/completions` tools": ("openai", "curl"),
    "`POST /v1/embeddings`": ("openai", "curl"),
    "`GET /v1/models/{id}`": ("openai", "curl"),
    "`POST /v1/responses`": ("openai", "curl"),
    "`POST /v1/responses` stream": ("openai", "curl"),
    "`POST /v1/responses` tools + `previous_response_id`": ("openai",),
    "`POST /v1/audio/transcriptions`": ("openai",),
    "`POST /v1/audio/speech` stream": ("openai",),
    "`POST /v1/rerank`": ("curl",),
    "`POST /v1/messages`": ("anthropic", "curl"),
    "`POST /v1/messages` stream": ("anthropic", "curl"),
    "`POST /v1/messages` tools": ("anthropic",),
    "`POST /v1/messages/count_tokens`": ("anthropic", "curl"),
    "`GET /api/tags`": ("ollama", "curl"),
    "`POST /api/show`": ("ollama", "curl"),
    "`POST /api/chat`": ("ollama", "curl"),
    "`POST /api/chat` stream": ("ollama", "curl"),
    "`POST /api/embed`": ("ollama", "curl"),
}
# Rows that need a transcription, speech or rerank model listed (this module's gateway
# lists them; a stack serving only chat and embeddings shows them as ✗).
NEEDS_AUDIO_MODELS = {
    "`POST /v1/audio/transcriptions`",
    "`POST /v1/audio/speech` stream",
    "`POST /v1/rerank`",
}


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp_path = tmp_path_factory.mktemp("compat")
    mock, gateway = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""version: 1
backends:
  mock:
    url: http://127.0.0.1:{mock}/v1
    class: mock
    health: {{liveness: /healthz, readiness: /readyz, interval_s: 1}}
    capabilities: [chat, completions, embeddings, transcriptions, speech, rerank]
    models:
      - {{id: mock-llama, capabilities: [chat, completions]}}
      - {{id: mock-embed, capabilities: [embeddings]}}
      - mock-whisper
      - mock-tts
      - mock-rerank
aliases:
  default: {{backend: mock, model: mock-llama}}
"""
    )
    env = {
        **os.environ,
        "GATEWAY_BEARER_TOKEN": TOKEN,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(gateway),
        "GATEWAY_DATA_DIR": str(tmp_path / "var"),
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_CONFIG_POLL_S": "0",
    }
    python = [sys.executable, "-m", "sidecar"]
    log = (tmp_path / "gateway.log").open("wb")
    processes = [
        subprocess.Popen([*python, "mock-backends", "--port", str(mock)], cwd=ROOT, env=env)
    ]
    try:
        wait_listening(mock, processes[0])
        processes.append(
            subprocess.Popen([*python, "serve"], cwd=ROOT, env=env, stdout=log, stderr=log)
        )
        wait_listening(gateway, processes[1])
        yield f"http://127.0.0.1:{gateway}"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def run_tool(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *args],
        cwd=ROOT,
        env=env or {**os.environ, "GATEWAY_BEARER_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def table_of(output: str) -> dict[str, dict[str, str]]:
    """``{endpoint: {client: cell}}`` from the printed markdown table."""
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["endpoint", *CLIENTS]
    rows = {}
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(CLIENTS, cells[1:], strict=True))
    return rows


@pytest.mark.timeout(300)
def test_the_table_shows_the_faces_working(live_gateway: str, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n\n<!-- compat-table:begin -->\nold\n<!-- compat-table:end -->\n\nafter\n"
    )
    result = run_tool("--base-url", live_gateway, "--readme", str(readme))
    assert result.returncode in (0, 1), result.stderr
    assert TOKEN not in result.stdout and TOKEN not in result.stderr
    rows = table_of(result.stdout)
    for endpoint, clients in MUST_PASS.items():
        for client in CLIENTS:
            expected = "✓" if client in clients else "—"
            assert rows[endpoint][client] == expected, (endpoint, client, result.stdout)
    failures = [cell for row in rows.values() for cell in row.values() if cell.startswith("✗")]
    assert (result.returncode == 1) == bool(failures)
    for number in range(1, len(failures) + 1):
        assert f"\n{number}. " in result.stdout
    text = readme.read_text()
    assert text.startswith("# x\n\n<!-- compat-table:begin -->\n<!-- generated by")
    assert text.endswith("<!-- compat-table:end -->\n\nafter\n")
    assert "| `POST /v1/messages` | — | ✓ | — | ✓ |" in text and "old" not in text


@pytest.mark.timeout(300)
def test_a_failing_cell_is_a_cross_with_its_reason(live_gateway: str) -> None:
    result = run_tool("--base-url", live_gateway, "--chat-model", "nobody-serves-this")
    assert result.returncode == 1
    rows = table_of(result.stdout)
    assert rows["`POST /v1/messages`"]["anthropic"].startswith("✗ (")
    assert rows["`POST /api/chat`"]["ollama"].startswith("✗ (")
    assert rows["`POST /api/embed`"]["ollama"] == "✓"  # the embeddings model still works
    notes = [line for line in result.stdout.splitlines() if line[:1].isdigit()]
    anthropic_note = next(n for n in notes if n.split(", ")[0].endswith("anthropic"))
    assert "NotFoundError" in anthropic_note and "nobody-serves-this" in anthropic_note


def test_usage_errors_exit_2() -> None:
    env = {key: value for key, value in os.environ.items() if key != "GATEWAY_BEARER_TOKEN"}
    assert run_tool("--base-url", "http://127.0.0.1:9", env=env).returncode == 2
    assert run_tool("--base-url", "not a url").returncode == 2
