"""What the UI handlers share: the users store and the stand-ins used without accounts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ..users.db import User
from ..users.store import UserStore


@dataclass
class UiState:
    users: UserStore
    local_user: User  # who "you" are when accounts are off
    anonymous_csrf: str  # the CSRF token of pages without a session
    # Replies being written after their browser went away; awaited at shutdown.
    pending: set[asyncio.Future[int]] = field(default_factory=set)
