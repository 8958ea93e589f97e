"""A package checked before it is loaded: every file's size at each start, and its sha256
once per file identity, so a damaged model is refused and a restart stays fast.

A file's identity is its path, size, inode and modification and change times. Any write to
the file (a flipped byte included) changes them, so a file whose identity was verified
before is not hashed again; a replaced or rewritten one is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edged.files import write_atomically
from edged.models.manifest import MANIFEST_NAME, ManifestError, file_sha256, fingerprint, read_manifest

CACHE_NAME = "verified-models.json"


class PackageDamaged(Exception):
    """A package's files do not match its manifest; the message names each file and why."""


def check_package(directory: Path, cache_dir: Path | None, hashes: bool = True) -> int:
    """Raise PackageDamaged unless every file of the package at ``directory`` matches its
    manifest; returns how many files had to be hashed (0 when all were verified before).
    ``cache_dir`` keeps the identities verified (None: hash every file); ``hashes=False``
    checks the sizes alone."""
    try:
        manifest = read_manifest(directory)
    except ManifestError as error:
        raise PackageDamaged(str(error)) from None
    if fingerprint(manifest.files) != manifest.fingerprint:
        raise PackageDamaged(f"{directory / MANIFEST_NAME}: its fingerprint does not match its file list")
    problems, identities = [], {}
    for entry in manifest.files:
        path = directory / entry.path
        try:
            info = path.stat()
        except OSError as error:
            problems.append(f"{path}: missing ({error.strerror})")
            continue
        if info.st_size != entry.size:
            problems.append(f"{path}: {info.st_size} bytes, the manifest says {entry.size} (truncated or replaced)")
            continue
        identities[entry.path] = f"{entry.sha256}:{info.st_size}:{info.st_ino}:{info.st_mtime_ns}:{info.st_ctime_ns}"
    if problems:
        raise PackageDamaged("; ".join(problems))
    if not hashes:
        return 0
    cache = _read_cache(cache_dir)
    known = cache.get(str(directory.resolve()), {})
    hashed = 0
    for entry in manifest.files:
        if known.get(entry.path) == identities[entry.path]:
            continue
        hashed += 1
        if file_sha256(directory / entry.path) != entry.sha256:
            problems.append(f"{directory / entry.path}: its sha256 differs from the manifest (corrupted or modified)")
    if problems:
        raise PackageDamaged("; ".join(problems))
    if hashed and cache_dir is not None:
        cache[str(directory.resolve())] = identities
        _write_cache(cache_dir, cache)
    return hashed


def _read_cache(cache_dir: Path | None) -> dict[str, dict[str, str]]:
    if cache_dir is None:
        return {}
    try:
        cache = json.loads((cache_dir / CACHE_NAME).read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: everything is hashed again, nothing is trusted
    if not isinstance(cache, dict) or not all(isinstance(v, dict) for v in cache.values()):
        return {}
    return cache


def _write_cache(cache_dir: Path, cache: dict[str, dict[str, str]]) -> None:
    try:
        write_atomically(cache_dir / CACHE_NAME, json.dumps(cache, indent=1).encode())
    except OSError:
        pass  # a read-only state dir costs the next start a re-hash, nothing else
    else:
        os.chmod(cache_dir / CACHE_NAME, 0o640)
