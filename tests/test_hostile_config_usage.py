"""Hostile configs and the usage ledger's owners.

- A small ``gateway.yaml`` must not make the loader copy gigabytes: a long string used
  thousands of times (aliases), a long key over a long list, a ``${VAR}`` expanded
  many times. Each is refused with a message, in bounded memory (``tracemalloc`` peak).
- A NUL character in a process's argv or environment, or a ``=`` in an environment
  variable's name, is refused: under uvloop the child would get a cut argument or another
  variable, without a word.
- The UI's usage page shows a user their own usage only: after an account is deleted, a
  new account of the same name does not see the old one's.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.config.loader import parse_config
from sidecar.config.tls import MAX_TLS_FILE_BYTES
from sidecar.config.yamlread import MAX_EXPANDED_CHARS
from sidecar.errors import ConfigError, ConfigIssue
from sidecar.settings import BackendTlsDefaults, UiSettings, UsageSettings
from sidecar.typedefs import RELOADER

from .conftest import TOKEN, gateway_yaml, mock_backend_yaml, rewrite, usage_db_rows
from .test_ui_api import ADMIN_USERS, LOOPBACK, add_user, eventually, log_in
from .test_usage_ui import chat

SOURCE = Path("/etc/gateway/gateway.yaml")
PEAK_MB = 40  # the refused bombs below would take 150 MB and more without the bound
TOO_LARGE = f"more than {MAX_EXPANDED_CHARS} characters once aliases and ${{VAR}}s are expanded"
BACKEND = "version: 1\nbackends:\n  m:\n    url: http://127.0.0.1:9/v1\n    models: [a]\n"


def refused(text: str, **environ: str) -> tuple[list[ConfigIssue], float]:
    """The issues of the ConfigError ``text`` raises, and the loader's peak memory in MB."""
    tracemalloc.start()
    try:
        parse_config(text.encode(), SOURCE, environ, BackendTlsDefaults())
    except ConfigError as exc:
        issues = exc.issues
    else:
        raise AssertionError("the config was accepted")
    finally:
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    return issues, peak


def alias_bomb() -> str:
    """100 KB of text with a ${VAR} in it, used 1,500 times: 150 MB once expanded."""
    big = "${UNSET:-}" + "x" * 100_000
    return BACKEND + f'a: &a "{big}"\nb: [' + ", ".join(["*a"] * 1_500) + "]\n"


def long_key_bomb() -> str:
    """A 50 KB key over a list of 3,000 items: every item's key path holds the key."""
    return BACKEND + "? " + "k" * 50_000 + "\n: [" + ",".join(["1"] * 3_000) + "]\n"


def variable_bomb() -> str:
    """A 64 KB variable named 3,000 times in one string: 190 MB once substituted."""
    return BACKEND.replace("models: [a]", 'models: ["' + "${BIG}" * 3_000 + '"]')


@pytest.mark.parametrize(
    ("make", "environ"),
    [(alias_bomb, {}), (long_key_bomb, {}), (variable_bomb, {"BIG": "v" * 65_536})],
    ids=["aliased string", "long key over a list", "variable named many times"],
)
def test_a_small_file_that_expands_hugely_is_refused_in_bounded_memory(
    make: Callable[[], str], environ: dict[str, str]
) -> None:
    text = make()
    assert len(text) < 200_000
    issues, peak = refused(text, **environ)
    assert [issue.message for issue in issues] == [TOO_LARGE]
    assert issues[0].line is not None and len(issues[0].path) <= 203  # cut, not 50 KB
    assert peak < PEAK_MB, f"the loader peaked at {peak:.0f} MB"


def test_a_big_valid_config_with_aliases_still_loads() -> None:
    """The bound is far above a real file: 200 backends sharing one anchored model list."""
    models = ", ".join(f"{{id: model-{j}-{'x' * 200}, capabilities: [chat]}}" for j in range(10))
    lines = ["version: 1", "backends:"]
    lines.append(f"  b0: {{url: 'http://10.0.0.1:8000/v1', models: &models [{models}]}}")
    lines += [f"  b{i}: {{url: 'http://10.0.0.1:8000/v1', models: *models}}" for i in range(1, 200)]
    config = parse_config(("\n".join(lines) + "\n").encode(), SOURCE, {}, BackendTlsDefaults())
    assert len(config.backends) == 200
    assert all(len(backend.models or ()) == 10 for backend in config.backends)


async def test_a_reload_of_an_alias_bomb_is_refused_and_the_old_config_serves(
    make_gateway: Any, start_mock: Any, tmp_path: Path
) -> None:
    backend = await start_mock()
    good = gateway_yaml(mock_backend_yaml("mock", backend))
    gateway = await make_gateway(good)
    reloader = gateway.server.app[RELOADER]
    rewrite(tmp_path / "gateway.yaml", alias_bomb())
    tracemalloc.start()
    try:
        outcome = await reloader.reload("test")
        peak = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    assert not outcome.ok and outcome.error is not None
    assert TOO_LARGE in outcome.error
    assert peak < PEAK_MB, f"the reload peaked at {peak:.0f} MB"
    async with gateway.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}) as reply:
        assert reply.status == 200
        assert "mock-llama" in [model["id"] for model in (await reply.json())["data"]]


# -- NUL characters and '=' in what becomes a process's argv and environment ----------------


def process_yaml(cmd: list[str], env: dict[str, str] | None = None) -> str:
    spec: dict[str, Any] = {"cmd": cmd}
    if env is not None:
        spec["env"] = env
    return (
        "version: 1\nbackends:\n  m:\n    url: http://127.0.0.1:{port}/v1\n"
        "    models: [{id: a, capabilities: [chat]}]\n"
        f"    process: {json.dumps(spec)}\n"
    )


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        (
            process_yaml(["/bin/server", "--model", "big\0--unsafe", "--port", "{port}"]),
            "backends.m.process.cmd[2]",
            "must not contain a NUL character (\\0)",
        ),
        (
            process_yaml(["/bin/server", "{port}"], {"HF_HOME": "/data\0/../etc"}),
            "backends.m.process.env.HF_HOME",
            "must not contain a NUL character (\\0)",
        ),
        (
            process_yaml(["/bin/server", "{port}"], {"PATH\0X": "/bin"}),
            "backends.m.process.env",
            "keys must not contain a NUL character (\\0)",
        ),
        (
            process_yaml(["/bin/server", "{port}"], {"LD_PRELOAD=/tmp/x.so MODEL": "a"}),
            "backends.m.process.env.LD_PRELOAD=/tmp/x.so MODEL",
            "must be a variable name (not empty, no '=')",
        ),
        (
            process_yaml(["/bin/server", "{port}"], {"": "a"}),
            "backends.m.process.env.",
            "must be a variable name (not empty, no '=')",
        ),
    ],
    ids=["NUL in cmd", "NUL in env value", "NUL in env name", "= in env name", "empty env name"],
)
def test_what_a_process_would_get_cut_or_changed_is_refused(
    text: str, path: str, message: str
) -> None:
    issues, _ = refused(text)
    assert (path, message) in [(issue.path, issue.message) for issue in issues], issues


def test_a_nul_in_a_tools_argv_is_refused() -> None:
    text = BACKEND + 'tools:\n  t:\n    subprocess: {argv: ["/bin/echo", "a\\0b"], sandbox: none}\n'
    issues, _ = refused(text)
    assert ("tools.t.subprocess.argv[1]", "must not contain a NUL character (\\0)") in [
        (issue.path, issue.message) for issue in issues
    ]


# -- usage: a user's own, not a deleted namesake's ------------------------------------------


async def test_a_new_account_does_not_see_the_usage_of_a_deleted_one_of_the_same_name(
    make_gateway: Any, start_mock: Any, tmp_path: Path
) -> None:
    backend = await start_mock()
    client = await make_gateway(
        gateway_yaml(mock_backend_yaml("mock", backend, health="{readiness: false}")),
        ui=UiSettings(accounts=True),
        ui_ip_allowlist=LOOPBACK,
        usage=UsageSettings(flush_s=0.02),
    )
    await add_user(client, "root", admin=True)
    await add_user(client, "x")
    root, old_x = await log_in(client, "root"), await log_in(client, "x")
    await chat(old_x, "the old x asks")
    await chat(old_x, "and asks again")
    await eventually(lambda: len(usage_db_rows(tmp_path)) >= 2, "the old x's two rows")
    own = await old_x.json("GET", "/ui/api/usage")
    assert [row["requests"] for row in own["users"]] == [2]

    assert (await root.call("DELETE", f"{ADMIN_USERS}/x")).status == 204
    made = {"username": "x", "password": "another long password"}
    await root.json("POST", ADMIN_USERS, made, status=201)
    new_x = await log_in(client, "x", "another long password")
    fresh = await new_x.json("GET", "/ui/api/usage")
    assert fresh["scope"] == "own"
    assert (fresh["days"], fresh["keys"], fresh["users"], fresh["models"]) == ([], [], [], [])

    await chat(new_x, "the new x asks")
    await eventually(lambda: len(usage_db_rows(tmp_path)) >= 3, "the new x's row")
    mine = await new_x.json("GET", "/ui/api/usage")
    assert [(row["user"], row["requests"]) for row in mine["users"]] == [("x", 1)]
    assert [row["requests"] for row in mine["days"]] == [1]
    # The admin still sees every request made under the name.
    everyone = await root.json("GET", "/ui/api/usage")
    assert [(row["user"], row["requests"]) for row in everyone["users"]] == [("x", 3)]


# -- TLS files: read within bounds ---------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "told"),
    [
        ("ca_bundle", "cannot load the CA bundle: larger than"),
        ("client_cert", "cannot load the client certificate: larger than"),
    ],
)
def test_a_huge_tls_file_is_refused_without_being_read(
    tmp_path: Path, field: str, told: str
) -> None:
    """A sparse 120 MB file (no disk used): the loader used to read it whole, twice."""
    huge = tmp_path / "huge.pem"
    with huge.open("wb") as handle:
        handle.truncate(120 * 1024 * 1024)
    text = (
        "version: 1\nbackends:\n  m:\n    url: https://127.0.0.1:9/v1\n    models: [a]\n"
        f"    tls: {{{field}: {huge}}}\n"
    )
    issues, peak = refused(text)
    found = [(issue.path, issue.message) for issue in issues]
    assert found == [(f"backends.m.tls.{field}", f"{told} {MAX_TLS_FILE_BYTES} bytes")]
    assert peak < PEAK_MB, f"the loader peaked at {peak:.0f} MB"
