"""The client's address, the site's host and scheme, as the gateway should believe them.

Behind Caddy on the unix socket, only Caddy can connect, and Caddy sets ``X-Real-IP``
from the TCP peer after stripping the client's own copy. On TCP, forwarded headers are
believed only when the peer is one of ``TRUSTED_PROXIES``.

This module is the only reader of forwarding headers (``X-Real-IP``, ``X-Forwarded-For``,
``-Proto``, ``-Host``): ``api.middleware.front`` applies what ``forwarded_overrides``
returns once, as ``request.clone(remote=..., host=..., scheme=...)``, and everything else
reads ``request.remote``, ``request.host`` and ``request.scheme``.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TypedDict

from aiohttp import web

from ..settings import IPNetwork


def via_trusted_proxy(request: web.Request, trusted: tuple[IPNetwork, ...]) -> bool:
    """Whether the forwarding headers on this request came from a proxy we trust."""
    transport = request.transport
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        return True
    peer = transport.get_extra_info("peername")
    return isinstance(peer, tuple) and bool(peer) and _in(peer[0], trusted)


def client_ip(request: web.Request, trusted: tuple[IPNetwork, ...]) -> str:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    peer = transport.get_extra_info("peername") if transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX:
        return _valid(request.headers.get("X-Real-IP")) or "unix"
    peer_ip: str | None = str(peer[0]) if isinstance(peer, tuple) and peer else None
    if peer_ip is None:
        return "unknown"
    if not _in(peer_ip, trusted):
        return peer_ip
    real_ip = _valid(request.headers.get("X-Real-IP"))
    if real_ip:
        return real_ip
    forwarded = request.headers.get("X-Forwarded-For", "")
    for hop in reversed([part.strip() for part in forwarded.split(",") if part.strip()]):
        hop_ip = _valid(hop)
        if hop_ip is None:
            break
        if not _in(hop_ip, trusted):
            return hop_ip
    return peer_ip


class Forwarded(TypedDict, total=False):
    """What ``request.clone`` takes from a trusted proxy's headers."""

    remote: str
    host: str
    scheme: str


def forwarded_overrides(request: web.Request, trusted: tuple[IPNetwork, ...]) -> Forwarded:
    """``remote``, ``host`` and ``scheme`` as a trusted proxy forwarded them (only those it
    sent; nothing from an untrusted peer, whose own address is ``remote`` already)."""
    if not via_trusted_proxy(request, trusted):
        return {}
    overrides: Forwarded = {"remote": client_ip(request, trusted)}
    proto = _first(request.headers.get("X-Forwarded-Proto")).lower()
    if proto:
        overrides["scheme"] = proto
    host = _first(request.headers.get("X-Forwarded-Host"))
    if host:
        overrides["host"] = host
    return overrides


def _first(value: str | None) -> str:
    return value.split(",")[0].strip() if value else ""


def _valid(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def _in(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    if not networks:  # nothing to match (no TRUSTED_PROXIES): no address to parse
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def address_allowed(address: str, allowlist: tuple[IPNetwork, ...]) -> bool:
    """Whether a client address is inside an allowlist (an empty list allows nobody)."""
    return _in(address, allowlist)
