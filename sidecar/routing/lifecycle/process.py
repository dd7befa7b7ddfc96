"""One model server process: started from the YAML's argv, logged, stopped, never orphaned.

Rules:

- The argv comes only from the YAML (``process.cmd``, no shell), with ``{port}`` replaced
  by the backend's loopback port. The environment is a small base (``PATH``, ``HOME``,
  ``LANG``, ``TZ``, ``TMPDIR``, ``LD_LIBRARY_PATH`` and the GPU runtime's ``CUDA_*``,
  ``HIP_*``, ``ROCR_*``, ``HSA_*``, ``NVIDIA_*``, ``GGML_*`` variables from the gateway's
  environment) plus the YAML's ``process.env``; never a gateway token or secret.
- The process runs in its own session and process group, so stopping it reaches every
  process it started: ``SIGTERM`` to the group, then ``SIGKILL`` after ``stop_timeout_s``.
- After a ``kill -9`` of the gateway, the kernel kills the direct child: on Linux it asks
  for ``SIGKILL`` when its parent dies (``PR_SET_PDEATHSIG``, set between fork and exec),
  and exits at once if the parent is already gone. The kernel sends that signal when the
  *thread* that forked the child exits, so processes are spawned from the event loop's
  thread (``asyncio.create_subprocess_exec``), which lives as long as the gateway; never
  from a worker thread (``asyncio.to_thread``). That signal reaches the direct child
  only, not what it started (a shell wrapper's children, vLLM's workers), so each process
  group is also recorded in ``<data dir>/models/<backend>.<pid>.group`` (its id, the
  leader's start time, the boot id and a random marker put in the model's environment,
  which its children inherit) while it runs; the next start of the gateway kills
  (``SIGKILL``) every process still in a recorded group that carries the marker or is
  the leader with the recorded start time, so a reused group id is never touched
  (``kill_leftovers``). Under systemd, ``KillMode=control-group`` covers the rest.
- Its stdout and stderr go to ``<data dir>/models/<backend>.log``, capped at
  ``MAX_LOG_BYTES`` (1 MiB): the full file is renamed to ``.log.1`` (replacing the older
  one) and a new one begun, so a chatty server holds at most 2 MiB of disk. Written off the
  event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger("gateway.models")

MAX_LOG_BYTES = 1024 * 1024
_READ_CHUNK = 64 * 1024
_BASE_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "LD_LIBRARY_PATH")
_RUNTIME_PREFIXES = ("CUDA_", "HIP_", "ROCR_", "HSA_", "NVIDIA_", "GGML_")
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_PR_SET_PDEATHSIG = 1
_MARKER = "GATEWAY_MODEL_GROUP"
_RECORD_SUFFIX = ".group"
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def model_environment(environ: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The base variables and GPU runtime settings from ``environ``, then ``extra``."""
    env = {"PATH": _SAFE_PATH, "LANG": "C.UTF-8"}
    for name, value in environ.items():
        if name in _BASE_VARIABLES or name.startswith(_RUNTIME_PREFIXES):
            env[name] = value
    env.update(extra)
    return env


def _die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the child
    """Between fork and exec: SIGKILL when the parent (thread) dies; gone already, exit."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


class RotatingLog:
    """A log file capped at ``max_bytes``, with one previous file kept. Blocking: call
    its methods from a thread."""

    def __init__(self, path: Path, max_bytes: int = MAX_LOG_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._file: BinaryIO | None = None
        self._size = 0

    def write(self, data: bytes) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open between writes
            self._size = self._file.tell()
        file = self._file
        while data:
            room = self.max_bytes - self._size
            if room <= 0:
                file = self._rotate(file)
                continue
            piece, data = data[:room], data[room:]
            file.write(piece)
            self._size += len(piece)
        file.flush()

    def _rotate(self, file: BinaryIO) -> BinaryIO:
        file.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._file = file = open(self.path, "ab")  # noqa: SIM115
        self._size = 0
        return file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ModelProcess:
    """A started model server: its process, and the task copying its output to the log."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        log_file: RotatingLog,
        record: Path | None = None,
    ) -> None:
        self.process = process
        self.pid = process.pid
        self._log = log_file
        self._record = record
        self._copier = asyncio.create_task(self._copy_output())

    @classmethod
    async def start(
        cls, argv: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> ModelProcess:
        """Spawn ``argv`` (from the event loop's thread: see the module's rules) and record
        its process group next to its log."""
        parent = os.getpid()
        marker = secrets.token_hex(16)
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**env, _MARKER: marker},
            start_new_session=True,
            preexec_fn=lambda: _die_with_parent(parent),
        )
        path = log_path.with_name(f"{log_path.stem}.{process.pid}{_RECORD_SUFFIX}")
        record: Path | None = path
        try:
            await asyncio.to_thread(_write_record, path, process.pid, marker)
        except OSError as exc:
            log.warning("cannot record model process group %d: %s", process.pid, exc)
            record = None
        return cls(process, RotatingLog(log_path), record)

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def wait(self) -> int:
        return await self.process.wait()

    async def stop(self, grace_s: float) -> None:
        """SIGTERM to its process group, SIGKILL after ``grace_s``; reaped either way."""
        if self.running:
            self._signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace_s):
                    await self.process.wait()
            except TimeoutError:
                log.warning(
                    "model process %d ignored SIGTERM for %gs; killing it", self.pid, grace_s
                )
        # Whatever it left in its group goes too, and then it is reaped.
        self._signal(signal.SIGKILL)
        await self.process.wait()
        await self._finish_log()
        record, self._record = self._record, None
        if record is not None:
            await asyncio.to_thread(record.unlink, missing_ok=True)

    def kill_now(self) -> None:
        """Synchronous last resort (the event loop is going away)."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def _finish_log(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.shield(self._copier)
        self._copier.cancel()
        await asyncio.gather(self._copier, return_exceptions=True)
        await asyncio.to_thread(self._log.close)

    async def _copy_output(self) -> None:
        stream = self.process.stdout
        if stream is None:
            return
        writable = True
        # Read to the end even when the log cannot be written: a full pipe would stall it.
        while chunk := await stream.read(_READ_CHUNK):
            if not writable:
                continue
            try:
                await asyncio.to_thread(self._log.write, chunk)
            except OSError as exc:
                writable = False
                log.warning("cannot write the log of model process %d: %s", self.pid, exc)


# -- process groups left by a gateway that was killed ---------------------------------------


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat(pid: int) -> tuple[int, int] | None:
    """``(process group, start time in clock ticks since boot)`` of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[2]), int(fields[19])


def _write_record(path: Path, pgid: int, marker: str) -> None:
    stat = _stat(pgid)
    record = {"pgid": pgid, "start": stat[1] if stat else None, "boot": _boot_id()}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({**record, "marker": marker}))
    os.replace(temporary, path)


def _carries(pid: int, marker: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{_MARKER}={marker}".encode() in environ.split(b"\0")


def kill_leftovers(models_dir: Path) -> int:
    """SIGKILL what is left of the process groups recorded under ``models_dir`` (a gateway
    that was killed could not stop them); remove the records. How many processes were
    killed. Blocking: call it from a thread."""
    if not models_dir.is_dir():
        return 0
    boot = _boot_id()
    killed = 0
    for path in sorted(models_dir.glob(f"*{_RECORD_SUFFIX}")):
        try:
            record = json.loads(path.read_text())
            pgid, start, marker = int(record["pgid"]), record["start"], str(record["marker"])
            same_boot = record.get("boot") == boot
        except (OSError, ValueError, KeyError, TypeError):
            same_boot = False
        if same_boot and pgid > 1:
            killed += _kill_group(pgid, start, marker)
        with contextlib.suppress(OSError):
            path.unlink()
    return killed


def _kill_group(pgid: int, start: Any, marker: str) -> int:
    killed = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        stat = _stat(pid)
        if stat is None or stat[0] != pgid:
            continue
        leader = pid == pgid and stat[1] == start
        if not (leader or _carries(pid, marker)):
            continue  # the group id was reused by something else
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
            log.warning(
                "killed process %d left over from model process group %d"
                " (a previous gateway did not stop it)",
                pid,
                pgid,
            )
    return killed
