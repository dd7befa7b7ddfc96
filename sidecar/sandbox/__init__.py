"""The sandbox subprocess tools run in: bubblewrap (``bwrap``), or nothing when the admin
says ``sandbox: none``.

Rules:

- A tool sees the system (``/usr``, the ``/bin`` and ``/lib*`` links or directories, a
  minimal ``/etc``) read-only, a fresh tmpfs ``/tmp``, its own ``/proc`` (a new PID
  namespace: no gateway process is visible) and a minimal ``/dev``. Nothing else: not the
  data dir, its ``secrets/``, token files, the users database, the tool logs, Caddy's
  storage. Visible besides: the files the argv names by absolute path and the
  ``read_only`` paths (read-only), and the tool's ``cwd`` (read-write) when one is set.
- New PID, IPC, UTS and cgroup namespaces, and no network unless ``network: true``; no
  capabilities (``--cap-drop ALL``), ``no_new_privs`` (bwrap always sets it), a new
  session (no terminal injection), ``/proc`` mounted read-only, and ``--die-with-parent``.
- The environment is only what ``tool_environment`` allows: it is handed to bwrap as its
  whole environment (bwrap passes it on unchanged), so no value appears on a command line.
- Killing bwrap kills every process of the tool, daemonized ones included: the namespace's
  init dies with its parent, and the kernel kills the rest of the namespace with it. When
  the tool itself exits, whatever it left running dies the same way.
- ``sandbox: none`` runs the argv unconfined under ``reaper.py``, a child subreaper that
  kills every descendant when the tool exits or the call ends (orphans, setsid and double
  forks included: they all re-parent to it). The environment filter still applies; the
  filesystem, ``/proc`` and the network are the gateway's own. Every load of a config with
  such a tool logs a warning.
- Where bwrap is: ``GATEWAY_BWRAP`` (a path) or ``bwrap`` on ``PATH``. A subprocess tool
  whose sandbox is missing or does not work here is refused when the config loads.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config imports this module to check tools at load
    from ..config.schema import ToolSpec

log = logging.getLogger("gateway.tools")

BWRAP_VARIABLE = "GATEWAY_BWRAP"
SEARCH_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) or write `sandbox: none` "
    "under this tool's `subprocess:` to run it unconfined"
)
REAPER = Path(__file__).with_name("reaper.py")
SANDBOX_TMP = "/tmp"  # noqa: S108 - a fresh tmpfs inside the sandbox, not the host's /tmp

# Bound read-only when present: a link stays a link (merged /usr), a directory is bound.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The part of /etc programs need (users, name service, TLS roots, the loader, time zones).
ETC_ENTRIES = (
    "passwd",
    "group",
    "nsswitch.conf",
    "hosts",
    "host.conf",
    "resolv.conf",
    "gai.conf",
    "services",
    "protocols",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "pki",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "alternatives",
    "mime.types",
    "os-release",
)

_working: set[str] = set()  # bwrap paths that ran a probe sandbox successfully


def find_bwrap(environ: Mapping[str, str]) -> str | None:
    """The bwrap to use: ``GATEWAY_BWRAP`` if set (it must be executable), else PATH's."""
    configured = environ.get(BWRAP_VARIABLE)
    if configured:
        path = Path(configured)
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which("bwrap", path=environ.get("PATH") or SEARCH_PATH)


def unavailable(environ: Mapping[str, str]) -> str | None:
    """Why the sandbox cannot run here (missing, or bwrap fails), or None when it works.

    Blocking (runs bwrap once per path and process): call it off the event loop.
    """
    bwrap = find_bwrap(environ)
    if bwrap is None:
        where = environ.get(BWRAP_VARIABLE) or "bwrap on PATH"
        return f"the bubblewrap sandbox is missing ({BWRAP_VARIABLE}/PATH: {where}); {INSTALL_HINT}"
    if bwrap in _working:
        return None
    argv = _command(bwrap, ("true",), network=False, read_only=(), cwd=None)
    try:
        result = subprocess.run(argv, capture_output=True, timeout=30, env={"PATH": SEARCH_PATH})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the bubblewrap sandbox ({bwrap}) cannot run: {exc}; {INSTALL_HINT}"
    if result.returncode != 0:
        reason = result.stderr.decode("utf-8", "replace").strip()[-300:] or "no message"
        return f"the bubblewrap sandbox ({bwrap}) does not work here: {reason}; {INSTALL_HINT}"
    _working.add(bwrap)
    return None


def command(spec: ToolSpec, environ: Mapping[str, str]) -> list[str] | None:
    """The argv that runs ``spec`` in its sandbox; None when bwrap is gone. Blocking."""
    if spec.sandbox == "none":
        return unconfined_command(spec)
    bwrap = find_bwrap(environ)
    return None if bwrap is None else bwrap_command(bwrap, spec)


def bwrap_command(bwrap: str, spec: ToolSpec) -> list[str]:
    """bwrap's argv for ``spec`` (see the module rules). Blocking: it looks at the files."""
    return _command(bwrap, spec.argv, spec.network, spec.read_only, spec.cwd)


def _command(
    bwrap: str,
    argv: tuple[str, ...],
    network: bool,
    read_only: Iterable[Path],
    cwd: Path | None,
) -> list[str]:
    command = [
        bwrap,
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
    ]
    if not network:
        command.append("--unshare-net")
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            command += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            command += ["--ro-bind", path, path]
    for name in ETC_ENTRIES:
        command += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for path in sorted(glob.glob("/etc/python3*")):  # Debian's sitecustomize
        command += ["--ro-bind-try", path, path]
    command += ["--proc", "/proc", "--remount-ro", "/proc", "--dev", "/dev", "--tmpfs", SANDBOX_TMP]
    for mount in read_only:
        command += ["--ro-bind", str(mount), str(mount)]
    for arg in argv:
        if os.path.isabs(arg) and not _is_system(arg) and os.path.isfile(arg):
            command += ["--ro-bind", arg, arg]
    if cwd is not None:
        command += ["--bind", str(cwd), str(cwd), "--chdir", str(cwd)]
    else:
        command += ["--chdir", SANDBOX_TMP]
    return [*command, "--", *argv]


def unconfined_command(spec: ToolSpec) -> list[str]:
    """``sandbox: none``: the argv under the subreaper that kills all it leaves behind."""
    return [sys.executable, "-I", "-S", str(REAPER), "--", *spec.argv]


def warn_unconfined(tools: Mapping[str, ToolSpec]) -> None:
    """Logged at every load of a config (start and reload) that has unconfined tools."""
    for name, spec in tools.items():
        if spec.executor == "subprocess" and spec.sandbox == "none":
            log.warning(
                "tool '%s' runs WITHOUT a sandbox (sandbox: none): it can read every file "
                "and process the gateway's user can, including its secrets",
                name,
            )


def _is_system(path: str) -> bool:
    return any(path == top or path.startswith(top + "/") for top in SYSTEM_PATHS)


def exposed(spec: ToolSpec, protected: Iterable[Path]) -> str | None:
    """Which of the gateway's own folders a sandboxed tool's mounts would show it, if any.

    ``cwd`` (read-write), ``read_only`` paths and files the argv names are bound into the
    sandbox; one that is, contains or sits inside a protected folder (the data dir with its
    tokens, keys, users database and logs) would undo the sandbox, so such a tool is
    refused. Symlinks are resolved first. Blocking: it looks at the files.
    """
    if spec.executor != "subprocess" or spec.sandbox == "none":
        return None
    mounts = [*spec.read_only, *([spec.cwd] if spec.cwd is not None else [])]
    mounts += [Path(arg) for arg in spec.argv if os.path.isabs(arg) and not _is_system(arg)]
    guarded = [path.resolve() for path in protected]
    for mount in mounts:
        shown = mount.resolve()
        for folder in guarded:
            if shown == folder or folder in shown.parents or shown in folder.parents:
                return f"{mount} would show the sandboxed tool the gateway's own files"
    return None
