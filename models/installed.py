"""Installed model packages, the RAM each needs, and which one ``[model] path`` means."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edged.engine.config import ModelConfig
from edged.models.manifest import MANIFEST_NAME, Manifest, ManifestError, read_manifest

MIB = 1 << 20
# onnxruntime, the tokenizer, Python and edged itself, measured at about 150 MiB; rounded up.
RUNTIME_OVERHEAD_MB = 200
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


def ram_need_mb(manifest: Manifest, max_length: int) -> int:
    """Weights as loaded, plus one full state at ``max_length``, plus the runtime."""
    state = manifest.architecture.state_bytes(max_length)
    return math.ceil((manifest.size_bytes + state) / MIB) + RUNTIME_OVERHEAD_MB


def installed_packages(models_dir: Path, max_length: int) -> list[InstalledPackage]:
    """Every package directory in ``models_dir`` (those with a readable manifest), by name."""
    if not models_dir.is_dir():
        return []
    found = []
    for directory in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            manifest = read_manifest(directory)
        except ManifestError:
            continue
        found.append(InstalledPackage(directory, manifest, ram_need_mb(manifest, max_length)))
    return found


def available_memory_mb() -> int:
    """MemAvailable from /proc/meminfo: what can be allocated without swapping."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable")


def usable_targets() -> tuple[str, ...]:
    """Targets whose execution provider this machine's onnxruntime has."""
    try:
        import onnxruntime
    except ImportError:
        return ("cpu",)
    providers = onnxruntime.get_available_providers()
    return ("cpu", "cuda") if "CUDAExecutionProvider" in providers else ("cpu",)


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
    packages = installed_packages(config.models_dir, config.max_length)
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
            '[model] headroom_mb or max_length, or set [model] path = "bundled" to try edged '
            "with its tiny model"
        )
    # Largest first; between equals, the accelerator's build.
    best = max(fitting, key=lambda p: (p.manifest.size_bytes, p.manifest.target != "cpu"))
    return ModelChoice(
        best.path,
        f"the largest of {len(fitting)} installed package(s) that fit: needs {best.ram_mb} MiB of "
        f"{budget} MiB available ({available} MiB free less {config.headroom_mb} MiB headroom)",
    )
