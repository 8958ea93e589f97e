"""``edged-model.json``: what a model package is, every file's hash, and its fingerprint.

The fingerprint is a hash over the file hashes. Saved model states carry it, so a state is
never loaded into a model it was not computed by.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edged.files import write_atomically

MANIFEST_NAME = "edged-model.json"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20

Precision = Literal["int4", "fp16", "fp32"]
Target = Literal["cpu", "cuda"]
VisionPrecision = Literal["int8", "fp16", "fp32"]


DEFAULT_BLOCK_SIZE = 32
"""How many int4 weights share a scale unless a build says otherwise (the builder's default)."""
BLOCK_SIZES = (32, 64, 128)


def weights_label(precision: Precision, block_size: int | None) -> str:
    """The decoder's weights as names and listings say them: int4 (blocks of 32), int4-b128, fp32."""
    return precision if block_size in (None, DEFAULT_BLOCK_SIZE) else f"{precision}-b{block_size}"


class PackageFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    size: int
    sha256: str


class Architecture(BaseModel):
    """The dimensions that decide a package's memory and its state layout."""

    model_config = ConfigDict(extra="forbid")

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    layer_types: list[str]
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int
    vocab_size: int
    context_length: int
    vision: bool

    def state_bytes(self, tokens: int) -> int:
        """Bytes of float32 model state after ``tokens`` tokens (DeltaNet fixed + KV growing)."""
        linear = self.layer_types.count("linear_attention")
        full = self.layer_types.count("full_attention")
        conv_dim = 2 * self.linear_num_key_heads * self.linear_key_head_dim + (
            self.linear_num_value_heads * self.linear_value_head_dim
        )
        recurrent = self.linear_num_value_heads * self.linear_key_head_dim * self.linear_value_head_dim
        per_linear = conv_dim * (self.linear_conv_kernel_dim - 1) + recurrent
        per_token = full * 2 * self.num_key_value_heads * self.head_dim
        return 4 * (linear * per_linear + tokens * per_token)


class Manifest(BaseModel):
    """The contents of ``edged-model.json``."""

    model_config = ConfigDict(extra="forbid")

    format: int = MANIFEST_FORMAT
    name: str
    source: str = Field(description="the checkpoint it was built from")
    architecture: Architecture
    precision: Precision
    target: Target
    modalities: list[Literal["text", "image"]]
    lm_head: Literal["last", "all"] = Field(description="logits for the last position only, or all")
    vision: VisionPrecision | None = Field(
        default=None, description="the vision encoder's weights (int8: quantized by the recipe); none in a text "
        "package or one built before edged recorded it")
    block_size: int | None = Field(
        default=None, description="int4 weights: how many share one scale; none in a float package or one built "
        "before edged recorded it (those are 32)")
    tools: dict[str, str] = Field(description="versions of the tools that built it")
    files: list[PackageFile]
    fingerprint: str

    @property
    def weights(self) -> str:
        return weights_label(self.precision, self.block_size)

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)


class ManifestError(Exception):
    """A package's manifest is missing or unreadable."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(files: Iterable[PackageFile]) -> str:
    """A hash over the (path, hash) of every file; the package's identity."""
    digest = hashlib.sha256()
    for entry in sorted(files, key=lambda f: f.path):
        digest.update(f"{entry.path}\0{entry.sha256}\n".encode())
    return digest.hexdigest()


def package_files(directory: Path) -> list[PackageFile]:
    """Every file below ``directory`` except the manifest, hashed."""
    files = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative == MANIFEST_NAME:
            continue
        files.append(PackageFile(path=relative, size=path.stat().st_size, sha256=file_sha256(path)))
    return files


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write ``edged-model.json`` atomically (temp file, fsync, rename)."""
    target = directory / MANIFEST_NAME
    write_atomically(target, (manifest.model_dump_json(indent=2) + "\n").encode())
    return target


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_NAME
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ManifestError(f"{directory}: no {MANIFEST_NAME}: not an edged model package") from None
    except (OSError, ValueError, ValidationError) as error:
        first = str(error).splitlines()[0]
        raise ManifestError(f"{path}: unreadable manifest: {first}") from None


def verify_package(directory: Path) -> list[str]:
    """One line per problem: each file missing, of the wrong size or the wrong hash."""
    try:
        manifest = read_manifest(directory)
    except ManifestError as error:
        return [str(error)]
    problems = []
    for entry in manifest.files:
        path = directory / entry.path
        if not path.is_file():
            problems.append(f"{entry.path}: missing")
        elif path.stat().st_size != entry.size:
            problems.append(f"{entry.path}: size {path.stat().st_size}, expected {entry.size}")
        elif file_sha256(path) != entry.sha256:
            problems.append(f"{entry.path}: sha256 differs from the manifest (corrupted or modified)")
    if fingerprint(manifest.files) != manifest.fingerprint:
        problems.append(f"{MANIFEST_NAME}: fingerprint does not match its file list")
    return problems
