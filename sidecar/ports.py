"""Picking a loopback port for a child process to listen on, and whether one is free.

Used by ``gateway up`` (fake backends, Caddy) and by the model lifecycle (a model server
the gateway starts gets its ``{port}`` here).
"""

from __future__ import annotations

import errno
import secrets
import socket
from pathlib import Path


def free_port() -> int:
    """A port nothing holds, for a child (a fake backend, Caddy) to listen on next.

    Picked below the kernel's ephemeral range where there is room: a port from
    ``bind(0)`` lies inside it, where any outgoing connection on the host may take it as
    its source port before the child binds it (EADDRINUSE on a busy machine)."""
    low = ephemeral_range_start()
    for _ in range(64):
        if low < 4096:
            break
        port = secrets.randbelow(low // 2) + low // 2
        if port_problem(port) is None:
            return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ephemeral_range_start() -> int:
    """The first port Linux hands out as a source port (0 when unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def port_problem(port: int, addresses: tuple[str, ...] = ("0.0.0.0", "::")) -> str | None:
    """Why a server could not listen on ``port``, or None when it can.

    Caddy listens on every address of the host for a site, so the port is tried on the
    IPv4 and IPv6 wildcards; a program listening on any one address of it holds it.
    ``SO_REUSEADDR`` as Caddy sets it: a closed connection's TIME_WAIT does not count.
    """
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this host
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind((address, port))
                probe.listen(1)
            except PermissionError:
                # A low port: Caddy may hold CAP_NET_BIND_SERVICE where this process does
                # not. Only a holder is refused here; Caddy's own error says the rest.
                return None
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return f"port {port} is already in use by another program"
                if exc.errno == errno.EADDRNOTAVAIL:  # e.g. IPv6 disabled
                    continue
                return f"cannot listen on port {port}: {exc.strerror or exc}"
    return None
