"""Identities of tool calls: the request hash (RFC 8785 JCS) and replay ids.

``request_hash`` is the SHA-256 of the canonical JSON of ``{"tool", "version",
"arguments"}``: the same call always hashes the same, whatever key order or number
spelling the client used. ``rfc8785`` implements the canonicalisation (its number
formatting is the subtle part of the RFC, and the library is maintained against it).

Test vectors: tool ``noop``, version ``"1"``, arguments ``{"text": "hi"}`` ->
``68a4c5f7d6540b44021f651af5947368d743f5f84f38d68ec5395cd37e4950c2``; arguments ``{}`` ->
``af9575d59fcd216d806426a07271a738a48073b2e06385251be99ca2847f57d7``.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import rfc8785


def request_hash(tool: str, version: str, arguments: Any) -> str:
    canonical = rfc8785.dumps({"tool": tool, "version": version, "arguments": arguments})
    return hashlib.sha256(canonical).hexdigest()


def canonical_hash(value: Any) -> str:
    return hashlib.sha256(rfc8785.dumps(value)).hexdigest()


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"
