"""Reads the configuration from its sources and remembers where each value came from.

Sources, later ones winning: the config file (``--config``, else ``$EDGED_CONFIG``, else
/etc/edged/edged.toml), the ``edged.d/*.toml`` drop-ins beside it in name order, ``EDGED_``
environment variables (``__`` between levels), then command-line flags. Tables merge key by
key; any other value, a list included, is replaced whole by a later source.

Every problem becomes one line naming the source, the key, the bad value and the reason, so
an operator can fix a file without reading a traceback.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsError

ENV_PREFIX = "EDGED_"
ENV_NESTED_DELIMITER = "__"
DEFAULT_CONFIG_PATH = Path("/etc/edged/edged.toml")
CONFIG_PATH_ENV = "EDGED_CONFIG"
DROP_IN_DIR = "edged.d"
EX_CONFIG = 78  # sysexits.h: configuration error; the unit does not restart on it

KeyPath = tuple[str | int, ...]

RESTART = {"restart": True}
"""A setting's metadata (RestartField sets it): a reload does not apply the setting; it takes
effect at the next restart, and the lifecycle says so, naming it."""


def RestartField(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - used where pydantic's Field is
    """pydantic's ``Field`` for a setting that only a restart applies."""
    return Field(*args, json_schema_extra=RESTART, **kwargs)


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one readable line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Override:
    """A value set on the command line, e.g. ``--set model.threads=2``."""

    key: str
    value: Any
    origin: str


@dataclass(frozen=True)
class LoadedConfig:
    """Validated settings, the files they were read from, and each value's source."""

    settings: Any
    """An instance of the schema it was read with (edged.settings.Settings for the daemon)."""
    files: tuple[Path, ...]
    origins: Mapping[KeyPath, str] = field(repr=False)

    def origin_of(self, key: KeyPath) -> str | None:
        """Where the value at ``key`` came from, or None for a default."""
        return self.origins.get(key)

    def describe_files(self) -> str:
        if not self.files:
            return "no config file (defaults)"
        names = str(self.files[0])
        if len(self.files) > 1:
            names += f" + {len(self.files) - 1} drop-in" + ("s" if len(self.files) > 2 else "")
        return names


def config_path(explicit: Path | None = None) -> tuple[Path, bool]:
    """The main config file, and whether the user named it (then it must exist)."""
    if explicit is not None:
        return explicit, True
    from_env = os.environ.get(CONFIG_PATH_ENV)
    if from_env:
        return Path(from_env), True
    return DEFAULT_CONFIG_PATH, False


def parse_override(assignment: str, origin: str | None = None) -> Override:
    """``KEY=VALUE`` from ``--set``; VALUE is read as a TOML value, else as a plain string."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key or not all(key.split(".")):
        raise ConfigError([f"--set {assignment}: expected KEY=VALUE, e.g. --set model.threads=2"])
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    return Override(key, value, origin or f"flag --set {key}")


def read_config(schema: type[BaseSettings], path: Path | None = None, overrides: Iterable[Override] = ()) -> LoadedConfig:
    """Read, merge and validate every source against ``schema``; raise ConfigError listing
    every problem."""
    main_path, must_exist = config_path(path)
    files = _config_files(main_path, must_exist)
    merged = _Merged()
    problems: list[str] = []
    for file in files:
        try:
            merged.add(_read_toml(file), lambda _key, file=file: str(file))
        except ConfigError as error:
            problems += error.problems
    if problems:  # what an unreadable file would have set is unknown: validating the rest misleads
        raise ConfigError(problems)
    try:
        environment = EnvSettingsSource(
            schema,
            env_prefix=ENV_PREFIX,
            env_nested_delimiter=ENV_NESTED_DELIMITER,
            case_sensitive=False,
        )()
        merged.add(environment, _environment_origin)
    except SettingsError as error:
        problems += _unparsable_environment_values() or [f"environment: {error}"]
    problems += _unknown_environment_settings(schema)
    for override in overrides:
        merged.add(_nest(override.key.split("."), override.value), lambda _key, o=override: o.origin)
    try:
        settings = schema(**merged.data)
    except ValidationError as error:
        problems += [_describe(e, merged.origins, schema) for e in error.errors()]
    if problems:
        raise ConfigError(problems)
    return LoadedConfig(settings=settings, files=tuple(files), origins=dict(merged.origins))


def changed_keys(old: BaseModel, new: BaseModel) -> list[str]:
    """Dotted keys whose values differ between two settings, for reload logs."""
    return sorted(_diff(old.model_dump(mode="json"), new.model_dump(mode="json"), ()))


def needs_restart(schema: type[BaseModel], key: str) -> bool:
    """Whether the changed dotted ``key`` (one value, or a whole table added or removed) holds
    a setting marked RESTART."""
    annotation: Any = schema
    for part in key.split("."):
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field_info = annotation.model_fields.get(part)
            if field_info is None:
                return False
            if field_info.json_schema_extra == RESTART:
                return True
        annotation = _child_annotation(annotation, part)
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return any(info.json_schema_extra == RESTART for info in annotation.model_fields.values())
    return False


def _diff(old: Any, new: Any, path: tuple[str, ...]) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(old) + [k for k in new if k not in old]
        return [d for k in keys for d in _diff(old.get(k), new.get(k), (*path, k))]
    return [".".join(path)] if old != new else []


# -- sources ---------------------------------------------------------------------------


def _config_files(main_path: Path, must_exist: bool) -> list[Path]:
    files = []
    if main_path.exists() or must_exist:
        files.append(main_path)
    drop_ins = main_path.parent / DROP_IN_DIR
    if drop_ins.is_dir():
        files += sorted((p for p in drop_ins.glob("*.toml") if p.is_file()), key=lambda p: p.name)
    return files


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{path}: {_syntax_problem(str(error))}"]) from None


def _syntax_problem(message: str) -> str:
    found = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message)
    if found:
        reason, line, column = found.groups()
        return f"line {line}, column {column}: invalid TOML: {reason}"
    return "invalid TOML: " + message.replace("(at end of document)", "at the end of the file")


def _environment_origin(key: KeyPath) -> str:
    """The variable that set ``key``: the longest ``EDGED_A__B`` prefix that is set."""
    names = {name.upper(): name for name in os.environ}
    for length in range(len(key), 0, -1):
        candidate = ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(k) for k in key[:length]).upper()
        if candidate in names:
            return f"environment {names[candidate]}"
    return "environment"


def _unparsable_environment_values() -> list[str]:
    """The EDGED_* variables whose value is meant as JSON (a table or a list) and is not."""
    problems = []
    for name, value in sorted(os.environ.items()):
        if not name.upper().startswith(ENV_PREFIX) or not value.lstrip().startswith(("{", "[")):
            continue
        try:
            json.loads(value)
        except ValueError as error:
            shown = value if len(value) <= 60 else value[:57] + "..."
            problems.append(f"environment {name}={shown!r}: not valid JSON ({error}); a table or list "
                            "set from the environment is written as JSON")
    return problems


def _unknown_environment_settings(schema: type[BaseSettings]) -> list[str]:
    known = set(schema.model_fields) | {CONFIG_PATH_ENV[len(ENV_PREFIX) :].lower()}
    problems = []
    for name in sorted(os.environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        top = name[len(ENV_PREFIX) :].split(ENV_NESTED_DELIMITER, 1)[0].lower()
        if top not in known:
            problems.append(f"environment {name}: unknown setting '{top}'{_suggest(top, sorted(known))}")
    return problems


def _nest(keys: Sequence[str], value: Any) -> dict[str, Any]:
    nested: Any = value
    for key in reversed(keys):
        nested = {key: nested}
    return nested


class _Merged:
    """Source data merged in precedence order, with the origin of every key path."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.origins: dict[KeyPath, str] = {}

    def add(self, layer: Mapping[str, Any], origin: Callable[[KeyPath], str]) -> None:
        self._merge(self.data, layer, (), origin)

    def _merge(self, into: dict[str, Any], layer: Mapping[str, Any], path: KeyPath, origin: Callable[[KeyPath], str]) -> None:
        for key, value in layer.items():
            here = (*path, key)
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                self.origins.setdefault(here, origin(here))
                self._merge(into[key], value, here, origin)
                continue
            for stale in [p for p in self.origins if p[: len(here)] == here]:
                del self.origins[stale]
            into[key] = copy.deepcopy(value)
            self._mark(here, value, origin)

    def _mark(self, path: KeyPath, value: Any, origin: Callable[[KeyPath], str]) -> None:
        self.origins[path] = origin(path)
        children: Iterable[tuple[str | int, Any]] = ()
        if isinstance(value, dict):
            children = value.items()
        elif isinstance(value, list):
            children = enumerate(value)
        for key, child in children:
            self._mark((*path, key), child, origin)


# -- problems --------------------------------------------------------------------------


def _describe(error: Mapping[str, Any], origins: Mapping[KeyPath, str], schema: type[BaseModel]) -> str:
    """One line for one validation error: source, key, reason, bad value."""
    loc: KeyPath = tuple(part for part in error["loc"] if part != "[key]")
    origin = next((origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins), "defaults")
    key = _dotted(loc)
    reason = _reason(error, loc, schema)
    return f"{origin}: {key}: {reason}" if key else f"{origin}: {reason}"


def _dotted(loc: KeyPath) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        # a key a file spelled oddly (a newline, spaces, nothing) is shown quoted: one line per problem
        shown = part if part and part.isprintable() and part.strip() == part else json.dumps(part)
        text += f".{shown}" if text else shown
    return text


def _reason(error: Mapping[str, Any], loc: KeyPath, schema: type[BaseModel]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required, but not set"
    if kind == "extra_forbidden":
        known = _known_keys(schema, loc[:-1])
        return "unknown key" + _suggest(str(loc[-1]), known)
    message = error["msg"].removeprefix("Value error, ")
    message = re.sub(r"^(Input|String|List|Value|Dictionary|Tuple|Set|Object) should ", "must ", message)
    if isinstance(error.get("input"), dict):
        return message  # a whole table is at fault: its own lines say what it holds
    return f"{message}, got {_show(error.get('input'))}"


def _suggest(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (known keys: {', '.join(known)})" if known else ""


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _known_keys(schema: type[BaseModel], path: KeyPath) -> list[str]:
    """The keys a table at ``path`` accepts, for 'did you mean' hints."""
    annotation: Any = schema
    for part in path:
        annotation = _child_annotation(annotation, part)
        if annotation is None:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _child_annotation(annotation: Any, part: str | int) -> Any:
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field_info = annotation.model_fields.get(str(part))
        return field_info.annotation if field_info else None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict and len(args) == 2:
        return args[1]
    if origin is list and args:
        return args[0]
    return None


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation
