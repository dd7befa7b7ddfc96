"""tools/freeze_release.py: freeze a release into a manifest, then verify the host against it.

The tool runs as the operator runs it, as a subprocess, against throwaway git repositories
in ``tmp_path`` (and once against this repository, read-only).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOL = REPO_ROOT / "tools" / "freeze_release.py"
SECRET = "supersecretvalue123"
YAML_SECRET = "sk-live-abc"
# Git must look at the repository under test, never at one named by the environment.
CLEAN_ENV = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        [
            "git",
            "-C",
            str(repo),
            "-c",
            "user.email=release@example.invalid",
            "-c",
            "user.name=Release Test",
            "-c",
            "commit.gpgsign=false",
            *args,
        ],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
        timeout=30,
        check=True,
    )
    return result.stdout.strip()


def freeze_tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
        timeout=60,
        check=False,
    )


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("freeze_release", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def self_hash(manifest: dict[str, Any]) -> str:
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def rehash(manifest_file: Path, manifest: dict[str, Any]) -> None:
    """Rewrite the manifest with a matching self-hash (an edit that is not tampering)."""
    manifest["manifest_sha256"] = self_hash(manifest)
    manifest_file.write_text(json.dumps(manifest), encoding="utf-8")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A clean, committed git repository: a few files, gateway.yaml and an ignored .env."""
    root = tmp_path / "release"
    (root / "sidecar").mkdir(parents=True)
    (root / "README.md").write_text("# a gateway\n")
    (root / ".gitignore").write_text(".env\n")
    (root / "sidecar" / "app.py").write_text("def create_app():\n    return None\n")
    (root / "gateway.yaml").write_text(
        "version: 1\n"
        "backends:\n"
        "  openai:\n"
        "    url: https://api.example.invalid/v1\n"
        f"    api_key: {YAML_SECRET}\n"
        "    token: ${GATEWAY_BEARER_TOKEN}\n"
    )
    (root / ".env").write_text(f"GATEWAY_BEARER_TOKEN={SECRET}\nUI_IP_ALLOWLIST=192.168.1.0/24\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".gitignore", "README.md", "sidecar/app.py", "gateway.yaml")
    git(root, "commit", "-q", "-m", "release")
    return root


@pytest.fixture
def frozen(repo: Path, tmp_path: Path) -> Path:
    """The manifest of ``repo``, written outside it so the work tree stays clean."""
    manifest_file = tmp_path / "out" / "release_manifest.json"
    result = freeze_tool("--root", repo, "--out", manifest_file)
    assert result.returncode == 0, result.stderr
    return manifest_file


def verify(repo: Path, manifest_file: Path) -> subprocess.CompletedProcess[str]:
    return freeze_tool("--root", repo, "--verify", manifest_file)


def drift_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The difference lines of a --verify run (without notes and the summary)."""
    return [
        line
        for line in result.stdout.splitlines()
        if not line.startswith(("OK:", "DRIFT:", "note:"))
    ]


def test_freeze_records_the_release(repo: Path, frozen: Path) -> None:
    manifest = json.loads(frozen.read_text())

    assert manifest["schema_version"] == 1
    assert manifest["manifest_sha256"] == self_hash(manifest)
    assert manifest["created"].endswith("+00:00")
    assert manifest["git"] == {
        "commit": git(repo, "rev-parse", "HEAD"),
        "branch": "main",
        "dirty": False,
    }
    assert sorted(manifest["files"]) == [
        ".gitignore",
        "README.md",
        "gateway.yaml",
        "sidecar/app.py",
    ]
    app = (repo / "sidecar" / "app.py").read_bytes()
    assert manifest["files"]["sidecar/app.py"] == {
        "sha256": hashlib.sha256(app).hexdigest(),
        "size": len(app),
    }
    assert manifest["python"]["executable"] == sys.executable
    assert set(manifest["platform"]) == {"system", "release", "machine"}
    assert "pytest" in manifest["distributions"]
    assert sorted(manifest["configs"]) == [".env", "gateway.yaml"]


def test_verify_passes_on_the_frozen_release(repo: Path, frozen: Path) -> None:
    (repo / "notes.txt").write_text("untracked files are not part of the release\n")

    result = verify(repo, frozen)

    assert result.returncode == 0, result.stdout + result.stderr
    assert drift_lines(result) == []
    assert result.stdout.startswith("OK: no drift")


def test_an_edited_tracked_file_is_drift(repo: Path, frozen: Path) -> None:
    with (repo / "sidecar" / "app.py").open("a") as source:
        source.write("# hotfix\n")

    result = verify(repo, frozen)

    assert result.returncode == 1
    assert drift_lines(result) == ["changed file: sidecar/app.py"]
    assert "DRIFT: 1 difference(s)" in result.stdout


def test_a_newly_tracked_file_is_added(repo: Path, frozen: Path) -> None:
    (repo / "sidecar" / "extra.py").write_text("EXTRA = 1\n")
    git(repo, "add", "sidecar/extra.py")

    result = verify(repo, frozen)

    assert result.returncode == 1
    assert drift_lines(result) == ["added file: sidecar/extra.py"]


def test_a_deleted_tracked_file_is_removed(repo: Path, frozen: Path) -> None:
    (repo / "README.md").unlink()

    result = verify(repo, frozen)

    assert result.returncode == 1
    assert drift_lines(result) == ["removed file: README.md"]


def test_a_tampered_manifest_is_detected(frozen: Path, repo: Path) -> None:
    manifest = json.loads(frozen.read_text())
    manifest["files"]["README.md"]["sha256"] = "0" * 64
    frozen.write_text(json.dumps(manifest))

    result = verify(repo, frozen)

    assert result.returncode == 1
    lines = drift_lines(result)
    assert lines[0].startswith("tampered:")
    assert "changed file: README.md" in lines


def test_tampering_with_a_field_that_is_never_drift_is_still_detected(
    frozen: Path, repo: Path
) -> None:
    manifest = json.loads(frozen.read_text())
    manifest["created"] = "2000-01-01T00:00:00+00:00"
    frozen.write_text(json.dumps(manifest))

    result = verify(repo, frozen)

    assert result.returncode == 1
    assert [line.split(":")[0] for line in drift_lines(result)] == ["tampered"]


def test_recorded_versions_that_differ_are_drift(frozen: Path, repo: Path) -> None:
    manifest = json.loads(frozen.read_text())
    manifest["distributions"]["pytest"] = "0.0.1"
    manifest["distributions"]["long-gone-package"] = "1.0"
    manifest["python"]["version"] = "3.11.0rc1"
    manifest["caddy"] = "v0.0.1 h1:old"
    rehash(frozen, manifest)

    result = verify(repo, frozen)

    assert result.returncode == 1
    lines = drift_lines(result)
    assert not any(line.startswith("tampered") for line in lines)
    assert "removed distribution: long-gone-package" in lines
    assert any(line.startswith("changed distribution: pytest (0.0.1 -> ") for line in lines)
    assert any(line.startswith("python version drift: 3.11.0rc1 -> ") for line in lines)
    assert any(line.startswith("caddy version drift: v0.0.1 h1:old -> ") for line in lines)


def test_secrets_never_reach_the_manifest(frozen: Path, repo: Path) -> None:
    text = frozen.read_text()
    manifest = json.loads(text)

    assert SECRET not in text
    assert YAML_SECRET not in text
    assert manifest["configs"][".env"]["redacted_keys"] == ["GATEWAY_BEARER_TOKEN"]
    # `token: ${GATEWAY_BEARER_TOKEN}` names where the secret comes from; it is kept.
    assert manifest["configs"]["gateway.yaml"]["redacted_keys"] == ["api_key"]
    env_text = (repo / ".env").read_bytes()
    assert manifest["configs"][".env"]["sha256"] != hashlib.sha256(env_text).hexdigest()


def test_a_rotated_secret_keeps_the_config_hash(frozen: Path, repo: Path) -> None:
    (repo / ".env").write_text(
        "GATEWAY_BEARER_TOKEN=rotated-to-another-value\nUI_IP_ALLOWLIST=192.168.1.0/24\n"
    )

    result = verify(repo, frozen)

    assert result.returncode == 0, result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_a_changed_yaml_secret_changes_the_file_but_not_the_config_hash(
    frozen: Path, repo: Path, tmp_path: Path
) -> None:
    gateway_yaml = repo / "gateway.yaml"
    gateway_yaml.write_text(gateway_yaml.read_text().replace(YAML_SECRET, "sk-live-xyz"))
    refrozen = tmp_path / "again.json"
    assert freeze_tool("--root", repo, "--out", refrozen).returncode == 0

    before, after = json.loads(frozen.read_text()), json.loads(refrozen.read_text())

    assert after["configs"]["gateway.yaml"] == before["configs"]["gateway.yaml"]
    assert after["files"]["gateway.yaml"] != before["files"]["gateway.yaml"]
    assert drift_lines(verify(repo, frozen)) == ["changed file: gateway.yaml"]


def test_a_changed_setting_in_an_untracked_config_is_drift(frozen: Path, repo: Path) -> None:
    (repo / ".env").write_text(f"GATEWAY_BEARER_TOKEN={SECRET}\nUI_IP_ALLOWLIST=0.0.0.0/0\n")

    result = verify(repo, frozen)

    assert result.returncode == 1
    assert drift_lines(result) == ["changed config: .env"]


def test_a_removed_config_is_drift(frozen: Path, repo: Path) -> None:
    (repo / ".env").unlink()

    result = verify(repo, frozen)

    assert result.returncode == 1
    assert drift_lines(result) == ["removed config: .env"]


def test_a_tracked_manifest_is_ignored(repo: Path) -> None:
    assert freeze_tool("--root", repo, "--out", repo / "release_manifest.json").returncode == 0
    git(repo, "add", "release_manifest.json")
    git(repo, "commit", "-q", "-m", "freeze")

    result = verify(repo, repo / "release_manifest.json")

    assert result.returncode == 0, result.stdout
    assert "note: HEAD moved" in result.stdout


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda tmp: ["--root", tmp, "--out", tmp / "m.json"], "not inside a git work tree"),
        (lambda tmp: ["--root", tmp, "--verify", tmp / "missing.json"], "cannot read manifest"),
        (lambda tmp: ["--root", tmp, "--config", tmp / "nope.yaml"], "--config file not found"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, make_args: Any, message: str) -> None:
    result = freeze_tool(*make_args(tmp_path))

    assert result.returncode == 2
    assert message in result.stderr


def test_a_manifest_that_is_not_json_is_a_usage_error(frozen: Path, repo: Path) -> None:
    frozen.write_text("{not json")

    result = verify(repo, frozen)

    assert result.returncode == 2
    assert "not valid JSON" in result.stderr


@pytest.mark.parametrize(
    ("config", "redacted", "keys"),
    [
        ("export DB_PASSWORD='p w'\n", "export DB_PASSWORD=<redacted>\n", ["DB_PASSWORD"]),
        ("# OLD_TOKEN=abc\n", "# OLD_TOKEN=<redacted>\n", ["OLD_TOKEN"]),
        ("A_KEY=\nB_KEY=${B}\n", "A_KEY=\nB_KEY=${B}\n", []),
        ("token: ${T:-fallback}\n", "token: <redacted>\n", ["token"]),
        ('  "ApiKey": "x",\n', '  "ApiKey": <redacted>\n', ["ApiKey"]),
        ("- secret: s\n  name: n\n", "- secret: <redacted>\n  name: n\n", ["secret"]),
        (
            "tls: {client_key: k.pem, verify: true}\r\n",
            "tls: {client_key: <redacted>, verify: true}\r\n",
            ["client_key"],
        ),
        (
            "private_key: |\n  -----BEGIN KEY-----\n  abc\nurl: u\n",
            "private_key: <redacted>\nurl: u\n",
            ["private_key"],
        ),
        ('CERT_KEY="line1\nline2"\nNEXT=1\n', "CERT_KEY=<redacted>\nNEXT=1\n", ["CERT_KEY"]),
        ("url: http://h/?a=b\nmodel: m\n", "url: http://h/?a=b\nmodel: m\n", []),
    ],
)
def test_redaction(config: str, redacted: str, keys: list[str]) -> None:
    assert load_tool().redact_config(config) == (redacted, keys)


def test_freezing_this_repository(tmp_path: Path) -> None:
    manifest_file = tmp_path / "release_manifest.json"

    result = freeze_tool("--root", REPO_ROOT, "--out", manifest_file)

    assert result.returncode == 0, result.stderr
    manifest = json.loads(manifest_file.read_text())
    assert manifest["manifest_sha256"] == self_hash(manifest)
    assert "aiohttp" in manifest["distributions"]
    assert "pyproject.toml" in manifest["files"]
    assert len(manifest["git"]["commit"]) == 40
    assert "gateway.yaml" in manifest["configs"]
    assert manifest["caddy"] is None or manifest["caddy"].startswith("v2.")
