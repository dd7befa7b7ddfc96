"""The YAML routing config: schema, loader, meaning checks and backend TLS (the live
reload that builds registries from it is ``sidecar.reload``, a layer above routing)."""

from ..errors import ConfigError, ConfigIssue
from .loader import load_config, parse_config
from .schema import AliasConfig, BackendConfig, GatewayConfig

__all__ = [
    "AliasConfig",
    "BackendConfig",
    "ConfigError",
    "ConfigIssue",
    "GatewayConfig",
    "load_config",
    "parse_config",
]
