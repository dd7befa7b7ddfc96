"""One model server process: started from the YAML's argv, logged, stopped, never orphaned.

Rules:

- The argv comes only from the YAML (``process.cmd``, no shell), with ``{port}`` replaced
  by the backend's loopback port. The environment is a small base (``PATH``, ``HOME``,
  ``LANG``, ``TZ``, ``TMPDIR``, ``LD_LIBRARY_PATH`` and the GPU runtime's ``CUDA_*``,
  ``HIP_*``, ``ROCR_*``, ``HSA_*``, ``NVIDIA_*``, ``GGML_*`` variables from the gateway's
  environment) plus the YAML's ``process.env``; never a gateway token or secret.
- The process runs in its own session and process group, so stopping it reaches every
  process it started: ``SIGTERM`` to the group, then ``SIGKILL`` after ``stop_timeout_s``.
- No model process outlives the gateway, even a ``kill -9`` of it: on Linux the child
  asks the kernel for ``SIGKILL`` when its parent dies (``PR_SET_PDEATHSIG``, set between
  fork and exec), and exits at once if the parent is already gone. The kernel sends that
  signal when the *thread* that forked the child exits, so processes are spawned from the
  event loop's thread (``asyncio.create_subprocess_exec``), which lives as long as the
  gateway; never from a worker thread (``asyncio.to_thread``).
- Its stdout and stderr go to ``<data dir>/models/<backend>.log``, capped at
  ``MAX_LOG_BYTES`` (1 MiB): the full file is renamed to ``.log.1`` (replacing the older
  one) and a new one begun, so a chatty server holds at most 2 MiB of disk. Written off the
  event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("gateway.models")

MAX_LOG_BYTES = 1024 * 1024
_READ_CHUNK = 64 * 1024
_BASE_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "LD_LIBRARY_PATH")
_RUNTIME_PREFIXES = ("CUDA_", "HIP_", "ROCR_", "HSA_", "NVIDIA_", "GGML_")
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_PR_SET_PDEATHSIG = 1
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

    def __init__(self, process: asyncio.subprocess.Process, log_file: RotatingLog) -> None:
        self.process = process
        self.pid = process.pid
        self._log = log_file
        self._copier = asyncio.create_task(self._copy_output())

    @classmethod
    async def start(
        cls, argv: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> ModelProcess:
        """Spawn ``argv`` (from the event loop's thread: see the module's rules)."""
        parent = os.getpid()
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            preexec_fn=lambda: _die_with_parent(parent),
        )
        return cls(process, RotatingLog(log_path))

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
