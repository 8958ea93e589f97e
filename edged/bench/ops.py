"""Where the decoder's time goes: onnxruntime's own timing of each operator, for one prefill
and for the decode steps after it.

This is what says which part of a run could be made faster and which could not: a prefill
that is mostly MatMulNBits runs at the speed of the CPU's int4 kernels however the loop
around it is written. The timings come from onnxruntime's profiler, which slows a prefill
by a few percent and a decode step by up to a quarter (at 0.8B, 38-41 ms against 32.7):
the shares are what to read.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edged.bench.engine import prompt_of

DECODE_STEPS = 8


@dataclass
class OpTime:
    op: str
    ms: float
    share: float
    nodes: int
    """Operator nodes of this type that ran (per step, for decoding)."""


@dataclass
class OpsBench:
    model: str
    threads: int
    prompt_tokens: int
    prefill_ms: float
    """The prefill's decoder run, as the profiler timed it."""
    prefill: list[OpTime]
    decode_step_ms: float
    """One decode step's decoder run, the mean of ``DECODE_STEPS``."""
    decode: list[OpTime]


def run_ops_bench(package: Path, threads: int = 0, prompt_tokens: int = 128) -> OpsBench:
    from edged.engine.engine import Engine

    with tempfile.TemporaryDirectory(prefix="edged-ops-") as folder:
        engine = Engine(package, threads=threads, profile_decoder=Path(folder) / "decoder")
        ids = engine.encode(prompt_of(engine, prompt_tokens))
        if not 0 < len(ids) <= engine.prefill_chunk:
            raise ValueError(f"a prompt of {prompt_tokens} tokens: it must be 1 to {engine.prefill_chunk}, "
                             "the most the engine runs in one piece")
        engine.extend(engine.new_state(), ids)  # warm-up: first runs allocate and pack
        state = engine.new_state()
        engine.extend(state, ids)
        # A decode step is a one-token run on the state; feeding the prompt's tokens again
        # times the same work as generating would, and no end-of-text can cut it short.
        for token in ids[:DECODE_STEPS + 1]:
            engine.extend(state, [token])
        events = json.loads(Path(engine.decoder.end_profiling()).read_text())
    _warm_up, prefill, _first_step, *steps = [event for event in events if event.get("name") == "model_run"]
    return OpsBench(
        model=package.name, threads=threads, prompt_tokens=len(ids),
        prefill_ms=round(prefill["dur"] / 1000, 2), prefill=_by_operator(events, [prefill]),
        decode_step_ms=round(sum(run["dur"] for run in steps) / len(steps) / 1000, 3),
        decode=_by_operator(events, steps),
    )


def _by_operator(events: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[OpTime]:
    """Kernel time per operator type within ``runs``, per run, largest first."""
    micros: dict[str, float] = defaultdict(float)
    nodes: dict[str, int] = defaultdict(int)
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        if any(run["ts"] <= event["ts"] <= run["ts"] + run["dur"] for run in runs):
            op = event["args"]["op_name"]
            micros[op] += event["dur"]
            nodes[op] += 1
    total = sum(micros.values()) or 1.0
    return [OpTime(op, round(us / len(runs) / 1000, 3), round(us / total, 4), nodes[op] // len(runs))
            for op, us in sorted(micros.items(), key=lambda item: -item[1])]


def format_table(bench: OpsBench, rows: int = 15) -> str:
    decode = {time.op: time for time in bench.decode}
    threads = "all threads" if not bench.threads else f"{bench.threads} thread{'s' if bench.threads > 1 else ''}"
    lines = [f"edged bench ops: {bench.model}, {threads}: decoder time by operator",
             f"{'operator':34} {'prefill ' + str(bench.prompt_tokens) + ' tokens':>24}   {'one decode step':>22}"]
    for time in bench.prefill[:rows]:
        step = decode.get(time.op)
        after = f"{step.ms:>9.2f} ms {step.share:>6.1%} {step.nodes:>4}" if step else ""
        lines.append(f"{time.op:34} {time.ms:>9.1f} ms {time.share:>6.1%} {time.nodes:>4}   {after}")
    if len(bench.prefill) > rows:
        lines.append(f"({len(bench.prefill) - rows} more operator types)")
    lines.append(f"{'the whole run':34} {bench.prefill_ms:>9.1f} ms {'':12}   {bench.decode_step_ms:>9.2f} ms")
    lines.append("ms: kernel time per run; %: share of all kernel time; then how many nodes ran")
    return "\n".join(lines)


def as_json(bench: OpsBench) -> str:
    return json.dumps(asdict(bench))
