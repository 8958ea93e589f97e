"""edged's configuration: one settings model, read from files, environment and flags."""

from edged.config.loader import (
    EX_CONFIG,
    ConfigError,
    LoadedConfig,
    Override,
    changed_keys,
    config_path,
    load_config,
    parse_override,
)
from edged.config.settings import Settings

__all__ = [
    "EX_CONFIG",
    "ConfigError",
    "LoadedConfig",
    "Override",
    "Settings",
    "changed_keys",
    "config_path",
    "load_config",
    "parse_override",
]
