"""What each model size costs a board: package size, memory, a frame's read and rules, decode.

Each package is measured in a fresh process of its own (``python -m edged.bench.sizes``), so
its load RSS and peak hold that package alone. A frame is a 448 x 448 picture read as the
daemon reads it (the vision encoder, then its tokens through the decoder after the system
prompt); its rules are the engine bench's eight, answered as forks of the read.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edged.bench.engine import RULES
from edged.bench.timing import best

DECODE_TOKENS = 32
MAX_LENGTH = 2048  # the daemon's default: buffers sized as a board would size them


@dataclass
class SizeFigures:
    """One package, as a camera owner would run it."""

    model: str
    dimensions: str
    """The decoder's layers and hidden size."""
    package_mb: float
    vision_mb: float
    load_s: float
    load_rss_mib: float
    """Resident memory once the engine has loaded, before any prompt."""
    frame_read_s: float
    rules_8_s: float
    """Eight rules' P(yes) on the read frame, one fork each (what the daemon does per frame)."""
    frame_with_8_rules_s: float
    decode_tok_s: float
    peak_rss_mib: float
    """The process's peak after all of the above."""


def measure_package(package: Path, threads: int, repeats: int) -> SizeFigures:
    """Every figure for one package, in this process (which should have loaded nothing else)."""
    from edged.agent.tasks import FrameTasks
    from edged.bench.vision import pictures
    from edged.engine.engine import Engine, GenerationOptions
    from edged.engine.prompt_format import ANSWER, rule_question
    from edged.models.manifest import read_manifest

    manifest = read_manifest(package)
    started = time.perf_counter()
    engine = Engine(package, threads=threads, max_length=MAX_LENGTH)
    load_s = time.perf_counter() - started
    load_rss = _status_mib("VmRSS")
    if engine._patch_grid is None:
        raise ValueError(f"{package} has no vision encoder: the size table measures vision-language packages")
    tasks = FrameTasks(engine, "You watch a camera and answer questions about what it sees.")
    scene = pictures()["drawn scene 0"]
    frame_read_s = best(lambda: tasks.read_picture(scene), repeats)
    read = tasks.read_picture(scene)
    tails = [engine.encode(rule_question(rule) + ANSWER) for rule in RULES]
    rules_s = best(lambda: engine.fork_logits(read, tails), repeats)

    def decode() -> float:
        state = read.fork()
        engine.extend_prompt(state, "Describe the picture." + ANSWER)
        engine.generate(state, GenerationOptions(max_tokens=1)).run()
        begun = time.perf_counter()
        tokens = engine.generate(state, GenerationOptions(max_tokens=DECODE_TOKENS)).run().tokens
        return len(tokens) / (time.perf_counter() - begun)

    decode()
    decode_tok_s = max(decode() for _ in range(repeats))
    architecture = manifest.architecture
    vision_bytes = sum(f.size for f in manifest.files if f.path.startswith("vision_encoder/"))
    return SizeFigures(
        model=manifest.name,
        dimensions=f"{architecture.num_hidden_layers} layers, hidden {architecture.hidden_size}",
        package_mb=round(manifest.size_bytes / 1e6, 1),
        vision_mb=round(vision_bytes / 1e6, 1),
        load_s=round(load_s, 2),
        load_rss_mib=round(load_rss, 1),
        frame_read_s=round(frame_read_s, 3),
        rules_8_s=round(rules_s, 3),
        frame_with_8_rules_s=round(frame_read_s + rules_s, 3),
        decode_tok_s=round(decode_tok_s, 2),
        peak_rss_mib=round(_status_mib("VmHWM"), 1),
    )


def _status_mib(field: str) -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report its
    # parent's peak.
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))
    return kib / 1024


def run_sizes_bench(packages: list[Path], threads: int = 0, repeats: int = 2,
                    progress=lambda line: None) -> list[SizeFigures]:
    """Each package measured in a fresh process, one after another (never side by side:
    they would share the cores)."""
    found = []
    for package in packages:
        progress(f"{package}")
        result = subprocess.run(
            [sys.executable, "-m", "edged.bench.sizes", str(package), str(threads), str(repeats)],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"measuring {package} failed (exit {result.returncode}):\n{tail}")
        found.append(SizeFigures(**json.loads(result.stdout.strip().splitlines()[-1])))
    return found


def format_table(figures: list[SizeFigures]) -> str:
    columns = [
        ("package", lambda f: f.model), ("MB", lambda f: f"{f.package_mb:.0f}"),
        ("vision MB", lambda f: f"{f.vision_mb:.0f}"), ("load s", lambda f: f"{f.load_s:.1f}"),
        ("load RSS MiB", lambda f: f"{f.load_rss_mib:.0f}"), ("frame read s", lambda f: f"{f.frame_read_s:.2f}"),
        ("8 rules s", lambda f: f"{f.rules_8_s:.2f}"), ("frame + 8 rules s", lambda f: f"{f.frame_with_8_rules_s:.2f}"),
        ("decode tok/s", lambda f: f"{f.decode_tok_s:.1f}"), ("peak RSS MiB", lambda f: f"{f.peak_rss_mib:.0f}"),
    ]
    rows = [[title for title, _ in columns]] + [[value(f) for _, value in columns] for f in figures]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def as_json(figures: list[SizeFigures]) -> str:
    return json.dumps([asdict(f) for f in figures], indent=2)


if __name__ == "__main__":
    package, threads, repeats = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(asdict(measure_package(package, threads, repeats))))
