"""Who may call: bearer tokens for ``/v1``, signed links to generated files (user sessions
arrive with the UI)."""

from .bearer import TokenSet, caller

__all__ = ["TokenSet", "caller"]
