"""The effective configuration as TOML, each value not a default marked with its source.

The output is itself a valid config file: ``edged config show > edged.toml`` round-trips.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from edged.config.loader import KeyPath, LoadedConfig

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def render_config(loaded: LoadedConfig) -> str:
    """TOML for ``loaded.settings``; a comment after each value says where it came from."""
    lines = [
        "# Effective edged configuration.",
        f"# Read from: {loaded.describe_files()}.",
        "# A value with no '# from' comment is the default.",
    ]
    data = loaded.settings.model_dump(mode="json")
    _table(lines, (), data, loaded)
    return "\n".join(lines) + "\n"


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) and bool(value)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(lines: list[str], path: KeyPath, table: dict[str, Any], loaded: LoadedConfig) -> None:
    plain = {k: v for k, v in table.items() if not isinstance(v, dict) and not _is_table_array(v)}
    if path and (plain or not any(_is_table(v) or _is_table_array(v) for v in table.values())):
        lines += ["", f"[{_dotted_key(path)}]"]
    for key, value in plain.items():
        here = (*path, key)
        if value is None:
            lines.append(f"# {_key(key)} is not set")
            continue
        lines.append(f"{_key(key)} = {_value(value)}{_origin_comment(loaded, here)}")
    for key, value in table.items():
        if _is_table(value):
            _table(lines, (*path, key), value, loaded)
        elif isinstance(value, dict):
            lines += ["", f"# [{_dotted_key((*path, key))}] has no entries"]
        elif _is_table_array(value):
            for index, item in enumerate(value):
                here = (*path, key, index)
                lines += ["", f"[[{_dotted_key((*path, key))}]]"]
                _table_body(lines, here, item, loaded)


def _table_body(lines: list[str], path: KeyPath, table: dict[str, Any], loaded: LoadedConfig) -> None:
    for key, value in table.items():
        if value is not None:
            lines.append(f"{_key(key)} = {_value(value)}{_origin_comment(loaded, (*path, key))}")


def _origin_comment(loaded: LoadedConfig, path: KeyPath) -> str:
    origin = loaded.origin_of(path)
    return f"  # from {origin}" if origin else ""


def _key(key: str | int) -> str:
    text = str(key)
    return text if _BARE_KEY.fullmatch(text) else json.dumps(text)


def _dotted_key(path: KeyPath) -> str:
    return ".".join(_key(k) for k in path if not isinstance(k, int))


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
