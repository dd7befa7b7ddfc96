"""Who may call: bearer tokens and named API keys (with scopes and limits) for ``/v1``,
signed links to generated files (user sessions arrive with the UI)."""

from .bearer import TokenSet, caller
from .scope import allows_model, allows_tool, require_model

__all__ = ["TokenSet", "allows_model", "allows_tool", "caller", "require_model"]
