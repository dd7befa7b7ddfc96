"""Who may call: bearer tokens for ``/v1`` (user sessions arrive with the UI)."""

from .bearer import TokenSet

__all__ = ["TokenSet"]
