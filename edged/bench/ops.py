"""Where the decoder's time goes: onnxruntime's own timing of each operator, for one prefill
and for the decode steps after it.

This is what says which part of a run could be made faster and which could not: a prefill
that is mostly MatMulNBits runs at the speed of the CPU's int4 kernels however the loop
around it is written. The timings come from onnxruntime's profiler, which slows a prefill
by a few percent and a decode step by up to a quarter (at 0.8B, 38-41 ms against 32.7):
the shares are what to read.

A decode step reads every int4 weight once, so the bench also splits the int4 products of
a decode step by weight matrix, each with the bytes the package stores for it and the rate
at which the step read them: at 0.8B the tied 248K-row lm_head takes about 30% of that time.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

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
class MatrixTime:
    matrix: str
    """The weight matrix, named as in the graph with the layer left out: ``lm_head``,
    ``layers.*/mlp/up_proj``."""
    ms: float
    share: float
    """Of the int4 products' kernel time."""
    nodes: int
    weights_mb: float
    """The int4 weights, scales and zero points of all its nodes, as the package stores them
    (onnxruntime repacks them for its kernels, with a float sum per block beside the scale)."""
    gb_per_s: float
    """``weights_mb`` over ``ms``: how fast the step read them, counted at the stored size (at
    block 32 the repacked copy that the kernels read is 1.2 times as large)."""


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
    decode_matrices: list[MatrixTime]
    """The int4 products (MatMulNBits) of one decode step, by weight matrix, largest first."""


def run_ops_bench(package: Path, threads: int = 0, prompt_tokens: int = 128) -> OpsBench:
    from edged.engine.engine import Engine

    with tempfile.TemporaryDirectory(prefix="edged-ops-") as folder:
        engine = Engine(package, threads=threads, profile_decoder=Path(folder) / "decoder")
        weights = _int4_weight_bytes(package / json.loads((package / "genai_config.json").read_text())
                                     ["model"]["decoder"]["filename"])
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
        decode=_by_operator(events, steps), decode_matrices=_by_matrix(events, steps, weights),
    )


def _node_events(events: list[dict[str, Any]], runs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The profiler's kernel events of the nodes that ran within ``runs``."""
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and \
                any(run["ts"] <= event["ts"] <= run["ts"] + run["dur"] for run in runs):
            yield event


def _by_operator(events: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[OpTime]:
    """Kernel time per operator type within ``runs``, per run, largest first."""
    micros: dict[str, float] = defaultdict(float)
    nodes: dict[str, int] = defaultdict(int)
    for event in _node_events(events, runs):
        op = event["args"]["op_name"]
        micros[op] += event["dur"]
        nodes[op] += 1
    total = sum(micros.values()) or 1.0
    return [OpTime(op, round(us / len(runs) / 1000, 3), round(us / total, 4), nodes[op] // len(runs))
            for op, us in sorted(micros.items(), key=lambda item: -item[1])]


def _int4_weight_bytes(decoder: Path) -> dict[str, int]:
    """Bytes of each MatMulNBits node's weights, scales and zero points, by node name, from
    the graph's initializers (their data stays on disk)."""
    import onnx

    graph = onnx.load(decoder, load_external_data=False).graph
    sizes = {tensor.name: int(np.prod(tensor.dims)) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
             for tensor in graph.initializer}
    return {node.name: sum(sizes.get(name, 0) for name in node.input[1:]) for node in graph.node
            if node.op_type == "MatMulNBits"}


def _matrix_of(node: str) -> str:
    """``/model/layers.3/mlp/up_proj/MatMul_Q4`` -> ``layers.*/mlp/up_proj``."""
    return re.sub(r"^/?(model/)?|/MatMul[^/]*$", "", re.sub(r"layers\.\d+", "layers.*", node))


def _by_matrix(events: list[dict[str, Any]], runs: list[dict[str, Any]], weights: dict[str, int]) -> list[MatrixTime]:
    """The MatMulNBits kernel time within ``runs``, per run, by weight matrix, largest first."""
    micros: dict[str, float] = defaultdict(float)
    for event in _node_events(events, runs):
        if event["args"]["op_name"] == "MatMulNBits":
            micros[event["name"].removesuffix("_kernel_time")] += event["dur"]
    by_matrix: dict[str, list[str]] = defaultdict(list)
    for node in micros:
        by_matrix[_matrix_of(node)].append(node)
    total = sum(micros.values()) or 1.0
    times = []
    for matrix, nodes in by_matrix.items():
        us = sum(micros[node] for node in nodes)
        mb = sum(weights.get(node, 0) for node in nodes) / 1e6
        ms = us / len(runs) / 1000
        times.append(MatrixTime(matrix, round(ms, 3), round(us / total, 4), len(nodes), round(mb, 4),
                                round(mb / ms, 1) if ms else 0.0))
    return sorted(times, key=lambda time: -time.ms)


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
    if bench.decode_matrices:
        lines += ["", "int4 products of one decode step, by weight matrix (each weight is read once a step)",
                  f"{'matrix':44} {'weights':>11} {'time':>10} {'share':>7} {'read at':>11}"]
        for time in bench.decode_matrices:
            name = f"{time.matrix} (x{time.nodes})" if time.nodes > 1 else time.matrix
            lines.append(f"{name:44} {time.weights_mb:>8.2f} MB {time.ms:>7.2f} ms {time.share:>7.1%} "
                         f"{time.gb_per_s:>6.1f} GB/s")
        mb, ms = sum(t.weights_mb for t in bench.decode_matrices), sum(t.ms for t in bench.decode_matrices)
        lines.append(f"{'all':44} {mb:>8.2f} MB {ms:>7.2f} ms {'':7} {mb / ms if ms else 0:>6.1f} GB/s")
    return "\n".join(lines)


def as_json(bench: OpsBench) -> str:
    return json.dumps(asdict(bench))
