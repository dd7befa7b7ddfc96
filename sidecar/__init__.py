"""Local AI Gateway sidecar: everything behind Caddy's unix socket."""

__version__ = "0.1.0"
