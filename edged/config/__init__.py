"""Reading a configuration: files, drop-ins, environment and flags, validated against a
settings schema, each value's source remembered. The schema itself is edged.settings'."""

from edged.config.loader import (
    EX_CONFIG,
    RESTART,
    ConfigError,
    LoadedConfig,
    Override,
    changed_keys,
    config_path,
    RestartField,
    needs_restart,
    parse_override,
    read_config,
)

__all__ = [
    "EX_CONFIG",
    "RESTART",
    "ConfigError",
    "LoadedConfig",
    "Override",
    "changed_keys",
    "config_path",
    "needs_restart",
    "parse_override",
    "RestartField",
    "read_config",
]
