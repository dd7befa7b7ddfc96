"""Run an unconfined tool (``sandbox: none``) so that nothing it starts outlives it.

Usage: ``python -I -S reaper.py -- argv...`` (standalone: imports only the standard
library). It makes itself a child subreaper, so every orphan of the tool (a double fork,
a ``setsid`` daemon) re-parents to it instead of PID 1, runs the argv, and when the tool
exits, or when it gets SIGTERM (the gateway's timeout or cancel, or the gateway's death),
it SIGKILLs every descendant it finds in ``/proc`` until none is left, then exits with
the tool's status.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def children(parent: int) -> list[int]:
    """The processes whose parent is ``parent``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(entry))
    return found


def kill_descendants() -> None:
    """SIGKILL and reap every descendant; a killed one's children re-parent here."""
    me = os.getpid()
    while kids := children(me):
        for pid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in kids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.stderr.write("reaper: no command\n")
        return 2
    gateway = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.stderr.write("reaper: cannot become a child subreaper\n")
        return 126

    def stop(signum: int, frame: object) -> None:
        kill_descendants()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # The gateway's death is a SIGTERM too (checked after: it may have died already).
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != gateway:
        return 128 + signal.SIGTERM
    tool = os.fork()
    if tool == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            os.execvp(argv[0], argv)  # noqa: S606 - the admin's argv, never a shell
        except OSError as exc:
            sys.stderr.write(f"cannot run {argv[0]}: {exc.strerror}\n")
        os._exit(127)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == tool:
            break
    kill_descendants()
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
