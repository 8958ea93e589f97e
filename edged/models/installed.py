"""Installed model packages, the RAM each needs, and which one ``[model] path`` means."""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edged.models.model_settings import ModelConfig
from edged.models.manifest import MANIFEST_NAME, Manifest, ManifestError, read_manifest

MIB = 1 << 20
# Fitted to the daemon's peak watching a camera at 0.8B, 2B and 4B (docs/engine.md, "Three
# sizes"): 1023 to 1072, 2120 and 4027 MiB against 1178, 2348 and 4276 from this formula.
LOADED_FACTOR = 1.3
"""Resident bytes per byte of the decoder and vision encoder files: onnxruntime's repacked
weights (more than the file holds: 602 MiB for the 0.8B decoder's 517 MiB) and the
activations. The pages of the files themselves are unmapped once loaded (memory.py)."""
RUNTIME_OVERHEAD_MB = 300
"""onnxruntime, the tokenizer, Python, edged itself, the frames and the states it keeps."""
READ_TOKENS = 512
"""A frame's read and a rule, in tokens: the system prompt, the picture (196 tokens at
448 x 448, 300 at 640 x 480) and the rule's question."""
BUNDLED_PACKAGE = Path(__file__).parent / "tiny" / "vl-fp32"


@dataclass(frozen=True)
class InstalledPackage:
    path: Path
    manifest: Manifest
    ram_mb: int


@dataclass(frozen=True)
class ModelChoice:
    path: Path
    reason: str


class ModelSelectionError(Exception):
    """``[model] path`` names no usable package; the message says what to do."""


def ram_need_mb(manifest: Manifest, max_length: int, rules_per_batch: int = 1) -> int:
    """The daemon's peak: the weights as loaded, one full state at ``max_length``, the
    runtime, and for rules run ``rules_per_batch`` to a call, the batch's states. The
    embedding's token table is left out: the engine reads the rows of the tokens in use from
    the file, mapping nothing (token_table.py)."""
    loaded = sum(f.size for f in manifest.files if not f.path.startswith("embedding/"))
    state = manifest.architecture.state_bytes(max_length)
    # A batch holds each row's state twice, the fork going in and the state coming out, where
    # one rule at a time holds one (measured at 0.8B: +146 MiB at 4 rows; docs/engine.md).
    batch = 2 * (rules_per_batch - 1) * manifest.architecture.state_bytes(READ_TOKENS)
    return math.ceil((LOADED_FACTOR * loaded + state + batch) / MIB) + RUNTIME_OVERHEAD_MB


def installed_packages(models_dir: Path, max_length: int, rules_per_batch: int = 1) -> list[InstalledPackage]:
    """Every package directory in ``models_dir`` (those with a readable manifest), by name."""
    if not models_dir.is_dir():
        return []
    found = []
    for directory in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            manifest = read_manifest(directory)
        except ManifestError:
            continue
        found.append(InstalledPackage(directory, manifest, ram_need_mb(manifest, max_length, rules_per_batch)))
    return found


def available_memory_mb(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """What edged can allocate without swapping or meeting its cgroup's limit, in MiB.

    The system's MemAvailable where /proc/meminfo can be read. Under the unit's
    ``ProcSubset=pid`` it cannot: then the free pages from sysinfo (page cache not counted,
    so a lower bound). Either way no more than the tightest ``memory.max`` of this process's
    cgroup and its parents leaves (cgroup v2; a ``MemoryMax=`` in the unit sets it)."""
    try:
        available = next(int(line.split()[1]) * 1024 for line in (proc / "meminfo").read_text().splitlines()
                         if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    room = _cgroup_room(proc, cgroup_root)
    return (available if room is None else min(available, room)) // MIB


def _cgroup_room(proc: Path, cgroup_root: Path) -> int | None:
    """Bytes left under the tightest memory.max of this process's cgroup v2 and its
    ancestors; None when none is set or they cannot be read."""
    try:
        line = next(line for line in (proc / "self" / "cgroup").read_text().splitlines() if line.startswith("0::"))
    except (OSError, StopIteration):
        return None
    group = cgroup_root / line[3:].strip().lstrip("/")
    rooms = []
    while True:
        try:
            limit = (group / "memory.max").read_text().strip()
            if limit != "max":
                rooms.append(int(limit) - int((group / "memory.current").read_text()))
        except (OSError, ValueError):
            pass  # the root has no memory.max; a parent may be out of view
        if group == cgroup_root or cgroup_root not in group.parents:
            break
        group = group.parent
    return max(0, min(rooms)) if rooms else None


def usable_targets() -> tuple[str, ...]:
    """Targets whose execution provider this machine's onnxruntime has: a build with CUDA
    ships its provider library. Found without importing onnxruntime (seconds on a Pi), so
    `edged config check` stays quick."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return ("cpu",)
    capi = Path(next(iter(spec.submodule_search_locations))) / "capi"
    return ("cpu", "cuda") if any(capi.glob("libonnxruntime_providers_cuda.*")) else ("cpu",)


def choose_model(
    config: ModelConfig, available_mb: int | None = None, targets: Sequence[str] | None = None
) -> ModelChoice:
    """The package ``[model] path`` means, and why; raises ModelSelectionError if none."""
    if config.path == "bundled":
        return ModelChoice(BUNDLED_PACKAGE, 'the tiny model bundled with edged ([model] path = "bundled")')
    if config.path != "auto":
        path = Path(config.path)
        if not (path / MANIFEST_NAME).is_file():
            raise ModelSelectionError(
                f"[model] path = {str(path)!r}: no model package there (no {MANIFEST_NAME}); "
                "build one with `edged models build` or install one with `edged models pull`"
            )
        return ModelChoice(path, "[model] path names it")
    return _choose_automatically(config, available_mb, targets)


def _choose_automatically(config: ModelConfig, available_mb: int | None, targets: Sequence[str] | None) -> ModelChoice:
    available = available_memory_mb() if available_mb is None else available_mb
    budget = available - config.headroom_mb
    targets = tuple(targets) if targets is not None else usable_targets()
    packages = installed_packages(config.models_dir, config.max_length, config.rules_per_batch)
    runnable = [p for p in packages if p.manifest.target in targets]
    fitting = [p for p in runnable if p.ram_mb <= budget]
    if not fitting:
        if not packages:
            found = f"no packages are installed in {config.models_dir}"
        else:
            smallest = min(runnable or packages, key=lambda p: p.ram_mb)
            found = (
                f"none of the {len(packages)} installed packages fits: the smallest, "
                f"{smallest.path.name}, needs {smallest.ram_mb} MiB"
            )
        raise ModelSelectionError(
            f'[model] path = "auto": {found}, and {budget} MiB are available '
            f"({available} MiB free less {config.headroom_mb} MiB headroom). Install a smaller "
            "package with `edged models pull NAME` (`edged models list` shows them), lower "
            f"[model] headroom_mb or max_length{' or rules_per_batch' if config.rules_per_batch > 1 else ''}, "
            'or set [model] path = "bundled" to try edged with its tiny model'
        )
    # Largest first; between equals, the accelerator's build.
    best = max(fitting, key=lambda p: (p.manifest.size_bytes, p.manifest.target != "cpu"))
    return ModelChoice(
        best.path,
        f"the largest of {len(fitting)} installed package(s) that fit: needs {best.ram_mb} MiB of "
        f"{budget} MiB available ({available} MiB free less {config.headroom_mb} MiB headroom)",
    )
