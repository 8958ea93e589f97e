"""Reading a request off the wire: bytes in, a validated Request or a refusal out.

A pure function, so that no input can raise out of it (the fuzz test holds it to that):
size and nesting depth are checked before the JSON parser sees the bytes, because
Python's parser recurses once per level and a few kilobytes of brackets exhaust its stack.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from edged.bus.schema import OPS, REQUEST, ErrorCode, Request

MAX_DEPTH = 16
"""Deepest nesting of objects and arrays in a request; the deepest op (rules.set) needs 3."""

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


@dataclass(frozen=True)
class Refusal:
    """Why a request cannot be served; ``request_id`` when the request had a readable one."""

    code: ErrorCode
    message: str
    request_id: str | None = None


def nesting_depth(payload: bytes) -> int:
    """How deeply arrays and objects nest in ``payload``, brackets inside strings not counted."""
    structure = np.frombuffer(_STRING.sub(b"", payload), np.uint8)
    steps = np.isin(structure, _OPEN).astype(np.int32) - np.isin(structure, _CLOSE).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def parse_request(payload: bytes, max_bytes: int) -> Request | Refusal:
    """The request ``payload`` holds, or why it is refused."""
    if len(payload) > max_bytes:
        return Refusal("too_large", f"request of {len(payload)} bytes; the limit is {max_bytes}")
    if nesting_depth(payload) > MAX_DEPTH:
        return Refusal("bad_request", f"objects and arrays nest deeper than {MAX_DEPTH} levels")
    try:
        message = json.loads(payload)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        return Refusal("bad_request", f"not JSON: {error}")
    if not isinstance(message, dict):
        return Refusal("bad_request", "a request is a JSON object")
    request_id = message.get("id") if isinstance(message.get("id"), str) else None
    if message.get("op") not in OPS:
        return Refusal("unknown_op", f"op {_shown(message.get('op'))} is not one of {', '.join(OPS)}", request_id)
    try:
        return REQUEST.validate_python(message)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "request"
        return Refusal("bad_request", f"{where}: {first['msg']}", request_id)


def _shown(value: object) -> str:
    """A value as an error message quotes it: short, whatever the client sent."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
