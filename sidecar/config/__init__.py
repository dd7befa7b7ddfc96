"""The YAML routing config: schema, loader and live reload."""

from .issues import ConfigError, ConfigIssue
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
