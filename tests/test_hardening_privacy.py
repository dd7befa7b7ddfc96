"""Issue 10, item 9: records are private.

Each test is an attack by a second, valid caller on a first caller's records, and counts
what got through: tool records (GET /v1/tools/replay/{id}), replays (POST), agent runs
(GET/POST /v1/agent/replay/{run_id}), UI conversations, and music audio with accounts
on. Token A is ``default``, token B is ``other``, and ``admin`` is named in
GATEWAY_ADMIN_TOKENS. Another token's record is a 404 exactly like an unknown id's, so
the attacker learns nothing about which ids exist.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from sidecar.errors import SettingsError
from sidecar.mock_backends import create_mock_app
from sidecar.mock_backends.heartmula import create_heartmula_app
from sidecar.settings import Settings, ToolsSettings, UiSettings, parse_bearer_tokens
from sidecar.typedefs import TOOLBUS

from .conftest import OTHER_TOKEN, TOKEN, GatewayFactory, backend_yaml, gateway_yaml
from .test_agents import agent, tools_yaml
from .test_ui_api import CONVERSATIONS, add_user, log_in

ADMIN_TOKEN = "admin-token-9f8e7d6c5b4a3210"
A = {"Authorization": f"Bearer {TOKEN}"}
B = {"Authorization": f"Bearer {OTHER_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
UNKNOWN_TOOL_ID = "tool-" + "0" * 24
UNKNOWN_RUN_ID = "run-" + "0" * 24


def three_tokens() -> Any:
    return parse_bearer_tokens(TOKEN, f"other:{OTHER_TOKEN},admin:{ADMIN_TOKEN}", "admin")


@pytest.fixture
async def gateway(
    make_gateway: GatewayFactory, start_mock: Any, tmp_path: Path
) -> tuple[TestClient, Path]:
    """Tools, an agent on a fake model, and the three tokens."""
    model = await start_mock(create_mock_app())
    config = gateway_yaml(
        backend_yaml(
            "mock",
            str(model.make_url("/v1")),
            **{"class": "mock", "models": "[{id: mock-llama, capabilities: [chat]}]"},
        ),
        aliases="default: {backend: mock, model: mock-llama}",
    ) + tools_yaml("noop", "calculator")
    agents_path = tmp_path / "agents.json"
    agents_path.write_text(json.dumps({"agents": {"helper": agent(tools=[])}}))
    client = await make_gateway(
        config,
        bearer_tokens=three_tokens(),
        tools=ToolsSettings(agent_specs_path=agents_path, log_mode="ndjson"),
    )
    return client, tmp_path / "var" / "tools" / "invocations.ndjson"


def log_lines(path: Path) -> int:
    return len(path.read_bytes().splitlines())


async def status_and_body(response: Any) -> tuple[int, Any]:
    return response.status, await response.json()


async def test_another_token_cannot_read_or_replay_a_tool_record(
    gateway: tuple[TestClient, Path],
) -> None:
    client, log_path = gateway
    ids = []
    for expression in ("1+1", "2*21", "1/0"):
        response = await client.post(
            "/v1/tools/calculator", json={"arguments": {"expression": expression}}, headers=A
        )
        assert response.status == 200, await response.text()
        ids.append((await response.json())["replay_id"])
    mcp = await client.post(
        "/mcp",
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "noop", "arguments": {"text": "via mcp"}},
        },
        headers=A,
    )
    ids.append((await mcp.json())["result"]["_meta"]["replay_id"])
    written = log_lines(log_path)
    assert written == 2 * 4  # an intent and an outcome per call

    # What an unknown id looks like, so B's answers can be compared with it.
    unknown_status, unknown = await status_and_body(
        await client.get(f"/v1/tools/replay/{UNKNOWN_TOOL_ID}", headers=B)
    )
    assert unknown_status == 404 and unknown["error"]["code"] == "replay_not_found"

    readable_by_b = replayed_by_b = 0
    for replay_id in ids:
        status, body = await status_and_body(
            await client.get(f"/v1/tools/replay/{replay_id}", headers=B)
        )
        readable_by_b += status == 200
        assert status == 404, body
        assert body["error"] == {
            **unknown["error"],
            "message": unknown["error"]["message"].replace(UNKNOWN_TOOL_ID, replay_id),
        }
        assert "expression" not in json.dumps(body) and "via mcp" not in json.dumps(body)
        status, body = await status_and_body(
            await client.post(f"/v1/tools/replay/{replay_id}", headers=B)
        )
        replayed_by_b += status == 200
        assert status == 404 and body["error"]["code"] == "replay_not_found", body
    assert (readable_by_b, replayed_by_b) == (0, 0)
    assert log_lines(log_path) == written  # B's replays ran nothing

    # The owner and the admin token read every record; the admin can replay one.
    for headers in (A, ADMIN):
        for replay_id in ids:
            response = await client.get(f"/v1/tools/replay/{replay_id}", headers=headers)
            assert response.status == 200
            assert (await response.json())["token"] == "default"
    response = await client.post(f"/v1/tools/replay/{ids[1]}", headers=ADMIN)
    assert response.status == 200 and (await response.json())["matches"] is True
    response = await client.post(f"/v1/tools/replay/{ids[0]}", headers=A)
    assert response.status == 200 and (await response.json())["matches"] is True
    assert log_lines(log_path) == written + 2 * 2


async def test_another_token_cannot_read_or_replay_an_agent_run(
    gateway: tuple[TestClient, Path],
) -> None:
    client, _ = gateway
    runs = []
    for text in ("first secret question", "second secret question"):
        response = await client.post(
            "/v1/agent/run", json={"agent": "helper", "input": text}, headers=A
        )
        assert response.status == 200, await response.text()
        runs.append((await response.json())["run_id"])

    unknown_status, unknown = await status_and_body(
        await client.get(f"/v1/agent/replay/{UNKNOWN_RUN_ID}", headers=B)
    )
    assert unknown_status == 404 and unknown["error"]["code"] == "run_not_found"
    readable_by_b = 0
    for run_id in runs:
        for method in ("GET", "POST"):
            response = await client.request(method, f"/v1/agent/replay/{run_id}", headers=B)
            status, body = await status_and_body(response)
            readable_by_b += status == 200
            assert status == 404 and body["error"]["code"] == "run_not_found", body
            assert "secret" not in json.dumps(body)
    assert readable_by_b == 0

    for headers in (A, ADMIN):
        for run_id in runs:
            response = await client.get(f"/v1/agent/replay/{run_id}", headers=headers)
            assert response.status == 200
            record = await response.json()
            assert record["token"] == "default" and "secret question" in json.dumps(record)
            response = await client.post(f"/v1/agent/replay/{run_id}", headers=headers)
            assert response.status == 200 and (await response.json())["deterministic"] is True


async def test_a_record_without_an_owner_is_for_admins_only(
    gateway: tuple[TestClient, Path],
) -> None:
    """A record written before records had owners (no token): only an admin reads it."""
    client, _ = gateway
    response = await client.post("/v1/tools/noop", json={"arguments": {"text": "x"}}, headers=A)
    replay_id = (await response.json())["replay_id"]
    bus = client.server.app[TOOLBUS]
    orphan = {**await bus.recorded(replay_id, token=None, admin=True)}
    orphan["replay_id"], orphan["token"] = "tool-" + "1" * 24, None
    bus.log.write(orphan)
    statuses = [
        (await client.get(f"/v1/tools/replay/{orphan['replay_id']}", headers=h)).status
        for h in (A, B, ADMIN)
    ]
    assert statuses == [404, 404, 200]


def test_admin_tokens_are_named_and_checked() -> None:
    tokens = {t.name: t.admin for t in three_tokens()}
    assert tokens == {"default": False, "other": False, "admin": True}
    with pytest.raises(SettingsError, match="GATEWAY_ADMIN_TOKENS") as refused:
        parse_bearer_tokens(TOKEN, f"other:{OTHER_TOKEN}", "root")
    assert TOKEN not in str(refused.value) and OTHER_TOKEN not in str(refused.value)
    settings = Settings.from_env(
        {
            "GATEWAY_BEARER_TOKENS": f"ops:{ADMIN_TOKEN},app:{TOKEN}",
            "GATEWAY_ADMIN_TOKENS": "ops",
        }
    )
    assert [(t.name, t.admin) for t in settings.bearer_tokens] == [("ops", True), ("app", False)]
    assert ADMIN_TOKEN not in repr(settings.bearer_tokens)


async def test_ui_users_see_only_their_own_conversations(
    make_gateway: GatewayFactory, start_mock: Any
) -> None:
    model = await start_mock()
    client = await make_gateway(
        gateway_yaml(
            backend_yaml(
                "mock",
                str(model.make_url("/v1")),
                **{"class": "mock", "models": "[{id: mock-llama, capabilities: [chat]}]"},
            )
        ),
        ui=UiSettings(accounts=True),
        ui_ip_allowlist=LOOPBACK,
    )
    await add_user(client, "alice")
    await add_user(client, "bob")
    alice = await log_in(client, "alice")
    bob = await log_in(client, "bob")
    mine = [
        (await alice.json("POST", CONVERSATIONS, {"title": f"alice {n}"}, status=201))["id"]
        for n in range(3)
    ]
    listed = await bob.json("GET", CONVERSATIONS)
    assert len([c for c in listed["data"] if c["id"] in mine]) == 0
    opened = 0
    for conversation_id in mine:
        response = await bob.call("GET", f"{CONVERSATIONS}/{conversation_id}")
        opened += response.status == 200
        assert response.status == 404
    assert opened == 0
    assert len((await alice.json("GET", CONVERSATIONS))["data"]) == 3


@pytest.fixture
async def music_accounts(
    make_gateway: GatewayFactory, start_mock: Any, tmp_path: Path
) -> tuple[TestClient, Path]:
    """Accounts on and the UI closed to every address: an API client is not a UI user."""
    audio_dir = tmp_path / "heartmula" / "audio"
    fake: TestServer = await start_mock(create_heartmula_app(audio_dir))
    client = await make_gateway(
        gateway_yaml(
            backend_yaml("music", f"http://{fake.host}:{fake.port}", protocol="heartmula")
        ),
        ui=UiSettings(accounts=True),
        ui_ip_allowlist=(),
    )
    return client, audio_dir


async def test_music_audio_reaches_the_api_client_that_generated_it(
    music_accounts: tuple[TestClient, Path],
) -> None:
    client, audio_dir = music_accounts
    response = await client.post(
        "/v1/music/generations", json={"prompt": "calm piano", "duration": 1}, headers=A
    )
    assert response.status == 200, await response.text()
    song = await response.json()
    name = song["audio_url"].rsplit("/", 1)[-1]
    on_disk = (audio_dir / name).read_bytes()
    link = URL(song["download_url"])
    assert link.path == f"/music/{name}" and set(link.query) == {"expires", "signature"}

    # The signed link works with no credentials at all; so does the bearer token.
    fetched = await client.get(song["download_url"])
    assert fetched.status == 200 and fetched.headers["Content-Type"] == "audio/wav"
    assert await fetched.read() == on_disk
    by_token = await client.get(f"/music/{name}", headers=A)
    assert by_token.status == 200 and await by_token.read() == on_disk
    served = len(on_disk)
    assert served > 44  # a real WAV, header and samples

    # Nothing else opens it: no credentials, a forged or moved signature, a wrong token.
    other = "f" * 24 + ".wav"
    refused = []
    for path, headers in (
        (f"/music/{name}", {}),
        (f"/music/{name}?expires={link.query['expires']}&signature={'0' * 64}", {}),
        (f"/music/{other}?{link.query_string}", {}),
        (f"/music/{name}?expires=1&signature={link.query['signature']}", {}),
        (f"/music/{name}", {"Authorization": "Bearer not-a-token-at-all-xyz"}),
    ):
        response = await client.get(path, headers=headers)
        refused.append(response.status)
        assert on_disk[44:80] not in await response.read()
    assert refused == [403, 403, 403, 403, 401]

    # The UI's path stays closed to an address outside UI_IP_ALLOWLIST, token or not.
    response = await client.get(f"/ui/heartmula/audio/{name}", headers=A)
    assert response.status == 403


async def test_ui_audio_path_takes_the_bearer_token_when_accounts_are_on(
    make_gateway: GatewayFactory, start_mock: Any, tmp_path: Path
) -> None:
    audio_dir = tmp_path / "heartmula" / "audio"
    fake: TestServer = await start_mock(create_heartmula_app(audio_dir))
    client = await make_gateway(
        gateway_yaml(
            backend_yaml("music", f"http://{fake.host}:{fake.port}", protocol="heartmula")
        ),
        ui=UiSettings(accounts=True),
        ui_ip_allowlist=LOOPBACK,
    )
    response = await client.post(
        "/v1/music/generations", json={"prompt": "folk", "duration": 1}, headers=A
    )
    song = await response.json()
    on_disk = (audio_dir / song["audio_url"].rsplit("/", 1)[-1]).read_bytes()
    no_session = await client.get(song["audio_url"], allow_redirects=False)
    # A UI path without a session or a token: off to the login page, no audio.
    assert no_session.status == 303 and no_session.headers["Location"].startswith("/ui/login")
    assert on_disk[44:80] not in await no_session.read()
    with_token = await client.get(song["audio_url"], headers=A)
    assert with_token.status == 200 and await with_token.read() == on_disk
    wrong = await client.get(song["audio_url"], headers=B | {"Authorization": "Bearer nope"})
    assert wrong.status == 401
