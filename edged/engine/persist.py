"""States on disk: safetensors files that name their model and are never seen half-written.

A file is written to a temporary name, fsynced and renamed into place, so a killed process
leaves the old file or the new one, never a torn one. The file carries the model's
fingerprint, the engine's arithmetic (``Engine.arithmetic``), the token ids and a checksum over
its tensors; one from another model, or one damaged on disk, is refused and never loaded. One
computed under other arithmetic (another onnxruntime, say, after an upgrade) is sound, and
the caller says whether to take it (store.py: a prefix is read again, a conversation goes on).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from safetensors import SafetensorError
from safetensors.numpy import load, save

from edged.engine.state import State
from edged.files import write_atomically

FORMAT = "edged-state/1"
_LOGITS = "__logits__"


class StateFileError(Exception):
    """A state file that cannot be used; the message says which and why."""


class ComputedElsewhere(StateFileError):
    """A sound state file whose numbers came from other arithmetic than this engine's."""


def save_state(state: State, path: Path, extra: dict[str, str] | None = None) -> int:
    """Write ``state`` to ``path`` atomically; returns the bytes written."""
    tensors = {name: np.ascontiguousarray(value) for name, value in state.arrays().items()}
    if state.logits is not None:
        tensors[_LOGITS] = state.logits
    metadata = {
        "format": FORMAT,
        "fingerprint": state.fingerprint,
        "arithmetic": state.arithmetic,
        "tokens": json.dumps(state.tokens),
        "pending": json.dumps(state.pending),
        "next_position": str(state.next_position),
        "checksum": _checksum(tensors),
        **(extra or {}),
    }
    data = save(tensors, metadata)
    write_atomically(path, data)
    return len(data)


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a state file, without loading its tensors."""
    try:
        with path.open("rb") as file:
            size = int.from_bytes(file.read(8), "little")
            if not 0 < size < 100 << 20:
                raise ValueError("bad header length")
            header = json.loads(file.read(size))
    except (OSError, ValueError, RecursionError) as error:
        raise StateFileError(f"{path}: not a readable state file ({error})") from None
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise StateFileError(f"{path}: not a state file (its header is not a safetensors header with text metadata)")
    return metadata


def load_state(path: Path, fingerprint: str, arithmetic: str | None, device: str = "cpu") -> State:
    """The state saved in ``path``; refuses a file of another model, a damaged one, or one
    computed under other ``arithmetic`` (ComputedElsewhere; None takes any, and the state
    keeps the arithmetic it was saved with)."""
    try:
        data = path.read_bytes()
        tensors = load(data)
    except (OSError, SafetensorError, ValueError) as error:
        raise StateFileError(f"{path}: not a readable state file ({error})") from None
    metadata = read_metadata(path)
    if metadata.get("format") != FORMAT:
        raise StateFileError(f"{path}: not an edged state file (format {metadata.get('format')!r})")
    if metadata.get("fingerprint") != fingerprint:
        raise StateFileError(
            f"{path}: saved by another model (fingerprint {metadata.get('fingerprint', '?')[:16]}, "
            f"this model is {fingerprint[:16]})"
        )
    recorded = metadata.get("arithmetic", "")
    if arithmetic is not None and recorded != arithmetic:
        raise ComputedElsewhere(
            f"{path}: computed under {recorded or 'arithmetic an older edged did not record'!r}, and this engine "
            f"runs {arithmetic!r}: continuing it could give other tokens than reading it afresh"
        )
    if metadata.get("checksum") != _checksum(tensors):
        raise StateFileError(f"{path}: damaged (its tensors do not match their checksum)")
    try:
        tokens, pending = _token_list(metadata["tokens"]), _token_list(metadata["pending"])
        next_position = int(metadata["next_position"])
    except (KeyError, ValueError, RecursionError) as error:
        raise StateFileError(f"{path}: damaged (its metadata does not describe a state: {error!r})") from None
    logits = tensors.pop(_LOGITS, None)
    return State(
        fingerprint=fingerprint,
        arithmetic=recorded,
        tokens=tokens,
        pending=pending,
        next_position=next_position,
        tensors={name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), device)
                 for name, value in tensors.items()},
        logits=logits,
    )


def _token_list(text: str) -> list[int]:
    tokens = json.loads(text)
    if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
        raise ValueError("not a list of token ids")
    return tokens


def set_aside(path: Path, refused_dir: Path) -> Path | None:
    """Move a refused state file into ``refused_dir`` for inspection (not deleted, and no
    longer in the way); where it went, or None if it could not be moved."""
    try:
        refused_dir.mkdir(parents=True, exist_ok=True)
        target = refused_dir / f"{path.stem}.{time.strftime('%Y%m%dT%H%M%S')}{path.suffix}"
        os.replace(path, target)
    except OSError:
        return None
    return target


def _checksum(tensors: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensors[name]).tobytes())
    return digest.hexdigest()
