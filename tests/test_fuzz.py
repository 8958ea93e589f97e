"""Fuzzing the two parsers that read what others write: bus requests and config files.
Bounded example counts, so CI runs them every time; crashes they found stay as examples."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edged.bus.requests import MAX_DEPTH, Refusal, nesting_depth, parse_request
from edged.bus.schema import OPS
from edged.config import ConfigError
from edged.settings import Settings, load_config

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)
REQUEST_FIELDS = ["v", "id", "op", "question", "camera", "frame_seq", "session", "max_tokens", "labels", "rules",
                  "format", "when", "on_threshold"]


def nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + closer * depth


@settings(max_examples=600, deadline=None)
@given(payload=st.one_of(
    st.binary(max_size=400),
    st.builds(lambda value: json.dumps(value).encode(), JSON_VALUES),
    st.builds(lambda fields: json.dumps(fields).encode(),
              st.dictionaries(st.sampled_from(REQUEST_FIELDS),
                              st.sampled_from([*OPS, 1, "x", None, [], {}, "front", -1, 2**70]) | JSON_VALUES,
                              max_size=8)),
    st.builds(nested, st.integers(0, 3000)),
    st.builds(lambda depth: b'{"v":1,"id":"x","op":"ask","question":' + nested(depth) + b"}", st.integers(0, 3000)),
))
@example(payload=nested(10_000))  # found: RecursionError killed the bus thread
@example(payload=b'{"a":' * 5_000 + b"1" + b"}" * 5_000)
@example(payload=b'"' + b"[" * 10_000 + b'"')  # brackets inside a string are not nesting
@example(payload=b"[" * 20_000)
def test_any_request_bytes_give_a_request_or_a_refusal_and_never_raise(payload: bytes) -> None:
    parsed = parse_request(payload, max_bytes=64 << 10)
    if isinstance(parsed, Refusal):
        assert parsed.code in ("bad_request", "unknown_op", "too_large") and parsed.message
    else:
        assert parsed.op in OPS and nesting_depth(payload) <= MAX_DEPTH


@pytest.mark.parametrize(("payload", "depth"), [
    (b"{}", 1), (b'{"a": [1, {"b": []}]}', 4), (b'"[[[["', 0), (b'["]", ["\\"["]]', 2), (b"1", 0),
])
def test_nesting_depth_counts_brackets_outside_strings(payload: bytes, depth: int) -> None:
    assert nesting_depth(payload) == depth


# -- config files -----------------------------------------------------------------------------


def toml_value(value: object) -> str:
    """``value`` as TOML, inline tables and arrays included."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML's basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(tables: dict[str, dict[str, object]]) -> str:
    return "".join(f"[{name}]\n" + "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in table.items())
                   for name, table in tables.items())


TOML_SCALARS = (st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() | st.text(max_size=20)
                | st.sampled_from(["synthetic", "file:/nonexistent", "auto", "bundled", "ipc:///tmp/x.sock",
                                   "tcp://0.0.0.0:1", "debug", "json", "0.5", "-1", ""]))
TOML_VALUES = st.recursive(TOML_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(min_size=1, max_size=10), inner, max_size=4), max_leaves=12)
FIELDS = sorted({name for table in ("model", "state", "bus", "log", "agent")
                 for name in Settings.model_fields[table].annotation.model_fields}
                | {"source", "fps", "rules", "masks", "when", "id", "gate_threshold", "enabled"})
TABLES = st.sampled_from(["model", "state", "bus", "log", "agent", "cameras.front", "cameras.b-ack", "nonsense"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.one_of(
    st.text(max_size=200),
    st.builds(toml_document, st.dictionaries(TABLES, st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8),
                                                                     TOML_VALUES, max_size=5), max_size=4)),
))
@example(document="[cameras.front]\nsource = \"synthetic\"\nrules = [{id = \"a\", when = \"b\"}, 5]\n")
def test_any_config_file_loads_or_gives_readable_problems_and_never_raises(tmp_path: Path, document: str) -> None:
    path = tmp_path / "edged.toml"
    path.write_text(document)
    try:
        load_config(path)
    except ConfigError as error:
        assert error.problems and all(isinstance(p, str) and p and "\n" not in p for p in error.problems)
