"""The engine against ORT GenAI's Generator, side by side in one run on one package.

Every figure is a ratio of two timings taken here, in this process, on the same package,
prompt and thread count, so it says how edged compares and not how fast this machine is.
Each timing is the best of ``repeats`` runs after a warm-up; edged's and og.Generator's runs
of a figure take turns (timing.best_in_turn), each side in a process of its own, the
processes loaded in both orders (sides.best_loaded_both_ways).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edged.bench.children import dies_with_parent
from edged.bench.sides import best_loaded_both_ways
from edged.bench.timing import best, best_in_turn, seconds
from edged.engine.prompt_format import ANSWER, USER_IMAGE, rule_question, system_turn, user_turn
from edged.images import encode_png, write_png

RULES = [
    "Is a person standing at the door", "Is a car parked in the driveway", "Is there a package on the step",
    "Is the gate open", "Is a dog in the yard", "Is it raining", "Is a light on in the window",
    "Is someone carrying a box",
]


@dataclass
class EngineBench:
    """Each figure for edged and for og.Generator as the package configures it (what its
    users get, and the baseline of the goals), and beside it og given edged's thread count."""

    model: str
    threads: int
    decode_tok_s: float
    og_decode_tok_s: float
    decode_ratio: float
    prefill_128_s: float
    og_prefill_128_s: float
    prefill_ratio: float
    fanout_s: float
    og_fanout_s: float
    fanout_ratio: float
    fanout_bound: float
    fanout_self_ratio: float
    prefix_ttft_ms: float
    og_prefix_ttft_ms: float
    prefix_ttft_ratio: float
    og_same_threads_decode_tok_s: float
    decode_ratio_same_threads: float
    og_same_threads_prefill_128_s: float
    prefill_ratio_same_threads: float
    og_same_threads_fanout_s: float
    fanout_ratio_same_threads: float
    og_same_threads_prefix_ttft_ms: float
    prefix_ttft_ratio_same_threads: float
    session_bytes: int
    peak_rss_mb: float
    og_peak_rss_mb: float
    peak_rss_more_prompts_mb: float
    og_peak_rss_more_prompts_mb: float
    frame_prep_ms: float = float("nan")
    """A 512 x 384 camera frame made ready for the vision encoder, as the daemon does it now."""
    png_frame_prep_ms: float = float("nan")
    """The same frame encoded to PNG and put through ORT GenAI's processor, as before."""
    frame_prep_ratio: float = float("nan")
    cpu: str = ""
    """The CPU's model name and vector extensions: machines of one kind differ up to 2x."""
    weights: str = ""
    """The decoder's weights as the manifest says them: int4, int4-b128 (docs/engine.md, "int4 blocks"), fp32."""
    prefill_512_s: float = float("nan")
    contended_decode_tok_s: float = float("nan")
    """Decode while another process keeps one core busy, the engine loaded under that load."""
    og_contended_decode_tok_s: float = float("nan")
    contended_decode_ratio: float = float("nan")
    contended_spin: bool | None = None
    """Whether edged's threads spun under that load (``[model] spin = "auto"`` decides)."""
    decode_long_tok_s: float = float("nan")
    """Decode after an 800-token prompt (a conversation's follow-up, a frame and its answer):
    the KV caches are what a step reads and writes more of as the context grows."""
    og_decode_long_tok_s: float = float("nan")
    decode_long_ratio: float = float("nan")
    og_same_threads_decode_long_tok_s: float = float("nan")
    decode_long_ratio_same_threads: float = float("nan")
    rules_sequential_s: float = float("nan")
    """8 rules' P(yes) on a read 448 x 448 frame, one prompt per rule (what the daemon does by
    default: ``[model] rules_per_batch = 1``)."""
    rules_batched_s: float = float("nan")
    """The same 8 rules as the rows of one batch, in one decoder call."""
    rules_batched_ratio: float = float("nan")
    encode_s: float = float("nan")
    float_encode_s: float = float("nan")
    frame_read_s: float = float("nan")
    """A 448 x 448 frame read as the daemon reads it: vision encoder, then its tokens."""
    float_frame_read_s: float = float("nan")
    frame_read_ratio: float = float("nan")
    """frame_read_s over float_frame_read_s: this package's encoder against a float32 one."""
    image_feature_cosine_mean: float = float("nan")
    image_feature_cosine_min: float = float("nan")
    rule_probability_change_max: float = float("nan")
    rule_probability_change_mean: float = float("nan")
    spin: bool | None = None
    """Whether edged's threads spun in the main measurements ([model] spin = "auto" decides)."""
    huge_page_mib: int = 0
    """MiB moved onto transparent huge pages as edged loaded the decoder: its weights, and any
    other memory of the process then wholly resident (0 where the kernel has none, they are
    ``never``, or the model runs on a GPU)."""
    llama: dict[str, dict[str, float]] | None = None
    """llama.cpp per quantization: decode tok/s, prefill s (128, 512 tokens), peak RSS MB."""
    llama_decode_ratio: float = float("nan")
    """edged's decode tok/s over llama.cpp Q4_K_M's, same threads."""
    llama_prefill_ratio: float = float("nan")
    """llama.cpp Q4_K_M's 128-token prefill time over edged's."""
    llama_prefill_512_ratio: float = float("nan")


class OgRunner:
    """ORT GenAI's Generator on the same package: the baseline. ``threads`` None runs it with
    the package's own session options (og then uses one intra-op thread unless the package
    says otherwise); a number sets its intra-op threads as edged's are set (0: all cores)."""

    def __init__(self, package: Path, threads: int | None) -> None:
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(package))
        genai = json.loads((package / "genai_config.json").read_text())["model"]
        if threads is not None:
            options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
            sections = {part: {"session_options": options} for part in ("decoder", "vision", "embedding") if part in genai}
            config.overlay(json.dumps({"model": sections}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.multimodal = "embedding" in genai
        self.processor = self.model.create_multimodal_processor() if self.multimodal else None

    def generator(self, prompt: str, images: list[str] | None, max_length: int):
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, do_sample=False)
        generator = og.Generator(self.model, params)
        if self.multimodal:
            loaded = og.Images.open(*images) if images else None
            generator.set_inputs(self.processor(prompt, images=loaded))
        else:
            generator.append_tokens(self.tokenizer.encode(prompt))
        return generator


def _words(count: int) -> str:
    rng = np.random.default_rng(0)
    words = "the a door person car yard gate light window street dog box parked open closed near".split()
    return " ".join(rng.choice(words) for _ in range(count))


def prompt_of(engine, tokens: int) -> str:
    """Text of about ``tokens`` tokens for this tokenizer, trimmed to exactly that many."""
    text = _words(tokens * 2)
    ids = engine.encode(text)[:tokens]
    return engine.decode(ids)


@dataclass
class Workload:
    """The prompts every side runs."""

    decode_prompt: str
    decode_tokens: int
    long_decode_prompt: str
    prefill_prompt: str
    prefill_512_prompt: str
    picture: Path
    image_head: str
    rule_tails: list[str]
    system: str
    question: str

    @classmethod
    def for_engine(cls, engine, image: Path | None) -> Workload:
        return cls(
            decode_prompt=engine.chat_prompt([{"role": "user", "content": "Describe the street."}]),
            decode_tokens=64,
            long_decode_prompt=prompt_of(engine, 800),
            prefill_prompt=prompt_of(engine, 128),
            prefill_512_prompt=prompt_of(engine, 512),
            picture=image or _picture(),
            image_head=USER_IMAGE,
            rule_tails=[rule_question(rule) + ANSWER for rule in RULES],
            # A 500-token system prompt and a 20-token question.
            system=system_turn(prompt_of(engine, 496)),
            question=user_turn(prompt_of(engine, 12)) + ANSWER,
        )


def run_engine_bench(package: Path, threads: int = 0, repeats: int = 3, image: Path | None = None,
                     float_vision: Path | None = None, llama_checkpoint: Path | None = None,
                     contended: bool = True, progress: Callable[[str], None] = lambda line: None) -> EngineBench:
    """Every figure side by side. ``float_vision``: a package of the same checkpoint with a
    float32 vision encoder, for the encoder's figures; ``llama_checkpoint``: the checkpoint the
    package was built from, run by llama.cpp (llama_peer.py); ``contended``: decode again with
    one core kept busy."""
    from edged.engine.engine import Engine

    progress("edged, og.Generator as configured and og.Generator at edged's threads, each in a process of its own, "
             "in turn")
    engine = Engine(package, threads=threads, max_length=1024)
    work = Workload.for_engine(engine, image)
    # On a GPU the threads are not what runs the model: og "at edged's threads" is og as
    # configured. (With the threads overlaid, og ran a CUDA package's vision encoder on the
    # CPU, where it has no kernel, even with the package's provider options in the overlay.)
    og_threads = threads if engine.device == "cpu" else None
    timed, _ = best_loaded_both_ways(SIDE, {"edged": ("edged", package, threads, work), "og": ("og", package, None, work),
                                            "og_same_threads": ("og", package, og_threads, work)}, repeats)
    progress("edged alone")
    ours = {**timed["edged"], **_edged_seconds(engine, work, repeats)}
    theirs, same_threads = ({"fanout": float("nan"), **timed[side]} for side in ("og", "og_same_threads"))
    token_ids = {"decode_prompt": engine.encode(work.decode_prompt), "prefill_128": engine.encode(work.prefill_prompt),
                 "prefill_512": engine.encode(work.prefill_512_prompt)}
    multimodal, spin, weights, huge = engine.multimodal, engine.spin, engine.manifest.weights, engine.huge_page_mib
    del engine
    progress("8 rules one after another and as one batch")
    ours.update(_rules_seconds(package, threads, work, repeats, progress) if multimodal
                else {"rules_sequential": float("nan"), "rules_batched": float("nan")})
    # Peak memory in fresh processes, once this one has let go of the models.
    progress("peak memory")
    peak, peak_later = _peak_rss_mb(package, threads, "edged")
    og_peak, og_peak_later = _peak_rss_mb(package, threads, "og")

    def ratio(kind: str, baseline: dict[str, float]) -> float:
        return round(baseline[kind] / ours[kind], 2)

    bench = EngineBench(
        model=package.name, threads=threads,
        decode_tok_s=round(1 / ours["decode"], 1), og_decode_tok_s=round(1 / theirs["decode"], 1),
        decode_ratio=ratio("decode", theirs),
        prefill_128_s=round(ours["prefill"], 4), og_prefill_128_s=round(theirs["prefill"], 4),
        prefill_ratio=ratio("prefill", theirs),
        fanout_s=round(ours["fanout"], 4), og_fanout_s=round(theirs["fanout"], 4),
        fanout_ratio=ratio("fanout", theirs), fanout_bound=round(ours["fanout_bound"], 2),
        fanout_self_ratio=round(ours["naive"] / ours["fanout"], 2),
        prefix_ttft_ms=round(ours["ttft"] * 1000, 1), og_prefix_ttft_ms=round(theirs["ttft"] * 1000, 1),
        prefix_ttft_ratio=ratio("ttft", theirs),
        og_same_threads_decode_tok_s=round(1 / same_threads["decode"], 1),
        decode_ratio_same_threads=ratio("decode", same_threads),
        og_same_threads_prefill_128_s=round(same_threads["prefill"], 4),
        prefill_ratio_same_threads=ratio("prefill", same_threads),
        og_same_threads_fanout_s=round(same_threads["fanout"], 4),
        fanout_ratio_same_threads=ratio("fanout", same_threads),
        og_same_threads_prefix_ttft_ms=round(same_threads["ttft"] * 1000, 1),
        prefix_ttft_ratio_same_threads=ratio("ttft", same_threads),
        session_bytes=ours["session_bytes"], peak_rss_mb=peak, og_peak_rss_mb=og_peak,
        peak_rss_more_prompts_mb=peak_later, og_peak_rss_more_prompts_mb=og_peak_later,
        frame_prep_ms=round(ours["frame_prep"] * 1000, 2), png_frame_prep_ms=round(ours["png_frame_prep"] * 1000, 2),
        frame_prep_ratio=round(ours["png_frame_prep"] / ours["frame_prep"], 1),
        cpu=cpu_description(), weights=weights, spin=spin, huge_page_mib=huge,
        prefill_512_s=round(ours["prefill_512"], 4),
        decode_long_tok_s=round(1 / ours["decode_long"], 1), og_decode_long_tok_s=round(1 / theirs["decode_long"], 1),
        decode_long_ratio=ratio("decode_long", theirs),
        og_same_threads_decode_long_tok_s=round(1 / same_threads["decode_long"], 1),
        decode_long_ratio_same_threads=ratio("decode_long", same_threads),
        rules_sequential_s=round(ours["rules_sequential"], 4), rules_batched_s=round(ours["rules_batched"], 4),
        rules_batched_ratio=round(ours["rules_batched"] / ours["rules_sequential"], 2),
    )
    if contended:
        progress("decode with one core kept busy")
        _add_contended(bench, package, threads, work, repeats)
    if float_vision is not None and multimodal:
        progress("vision encoder against the float32 one")
        _add_vision(bench, package, float_vision, threads, repeats, spin)
    if llama_checkpoint is not None:
        progress("llama.cpp")
        _add_llama(bench, llama_checkpoint, threads, token_ids, work.decode_tokens, repeats, progress)
    return bench


def cpu_description() -> str:
    """The CPU's model name and the vector extensions that decide which kernels run."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")
    return f"{name} ({' '.join(flag for flag in wanted if flag in flags) or 'no AVX2'})"


def _add_contended(bench: EngineBench, package: Path, threads: int, work: Workload, repeats: int) -> None:
    """Decode for edged and og-as-configured while a process keeps one core busy, each loaded
    under that load (as on a board where the camera and other services run first)."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=dies_with_parent)
    try:
        time.sleep(0.5)
        timed, facts = best_loaded_both_ways(SIDE, {"edged": ("edged", package, threads, work),
                                                    "og": ("og", package, None, work)}, repeats, figures=["decode"])
        bench.contended_spin = facts["edged"]
        ours, theirs = timed["edged"]["decode"], timed["og"]["decode"]
    finally:
        busy.kill()
        busy.wait()
    bench.contended_decode_tok_s = round(1 / ours, 1)
    bench.og_contended_decode_tok_s = round(1 / theirs, 1)
    bench.contended_decode_ratio = round(theirs / ours, 2)


def _add_vision(bench: EngineBench, package: Path, float_package: Path, threads: int, repeats: int,
                spin: bool) -> None:
    from edged.bench import vision

    # both engines wait alike: a measurement of the free cores could differ between the two loads
    ours = vision.measure(package, threads, repeats, RULES, spin)
    reference = vision.measure(float_package, threads, repeats, RULES, spin)
    cosines = vision.cosines(ours, reference)
    bench.encode_s, bench.float_encode_s = round(ours.encode_s, 4), round(reference.encode_s, 4)
    bench.frame_read_s, bench.float_frame_read_s = round(ours.frame_read_s, 4), round(reference.frame_read_s, 4)
    bench.frame_read_ratio = round(ours.frame_read_s / reference.frame_read_s, 2)
    bench.image_feature_cosine_mean = round(float(cosines.mean()), 5)
    bench.image_feature_cosine_min = round(float(cosines.min()), 5)
    changes = vision.probability_changes(ours, reference)
    bench.rule_probability_change_max = round(float(changes.max()), 4)
    bench.rule_probability_change_mean = round(float(changes.mean()), 4)


def _add_llama(bench: EngineBench, checkpoint: Path, threads: int, token_ids: dict[str, list[int]],
               decode_tokens: int, repeats: int, progress: Callable[[str], None]) -> None:
    from edged.bench import llama_peer

    peer_threads = threads or len(os.sched_getaffinity(0))
    prefill = {name: ids for name, ids in token_ids.items() if name.startswith("prefill")}
    figures = {}
    for name, gguf in llama_peer.gguf_files(checkpoint, progress).items():
        # Its speed comes and goes in stretches (llama_peer.SPAN_S), and a stretch can outlast
        # one process's span: the best of two processes.
        runs = [llama_peer.measure(gguf, peer_threads, token_ids["decode_prompt"], prefill, decode_tokens, repeats)
                for _ in range(2)]
        measured = {figure: (max if figure == "peak_rss_mb" else min)(run[figure] for run in runs) for figure in runs[0]}
        figures[name] = {"decode_tok_s": round(1 / measured["decode"], 1), "prefill_128_s": round(measured["prefill_128"], 4),
                         "prefill_512_s": round(measured["prefill_512"], 4), "peak_rss_mb": round(measured["peak_rss_mb"], 1),
                         "file_mb": round(gguf.stat().st_size / 1e6, 1)}
    bench.llama = figures
    k_m = figures["Q4_K_M"]
    bench.llama_decode_ratio = round(bench.decode_tok_s / k_m["decode_tok_s"], 2)
    bench.llama_prefill_ratio = round(k_m["prefill_128_s"] / bench.prefill_128_s, 2)
    bench.llama_prefill_512_ratio = round(k_m["prefill_512_s"] / bench.prefill_512_s, 2)


SIDE = "edged.bench.engine:side_timings"
"""What a side's process (sides.SideProcess) runs."""


def side_timings(kind: str, package: Path, threads: int | None, work: Workload) -> tuple[dict[str, Callable[[], float]],
                                                                                          bool | None]:
    """A side of the comparison, loaded alone: "edged" (an Engine at ``threads``; and whether
    its threads spin) or "og" (og.Generator: ``threads`` None as the package configures it)."""
    if kind == "edged":
        from edged.engine.engine import Engine

        engine = Engine(package, threads=threads, max_length=1024)
        return _edged_timings(engine, work), engine.spin
    return _og_timings(OgRunner(package, threads), work), None


def _edged_timings(engine, work: Workload) -> dict[str, Callable[[], float]]:
    """The figures og.Generator has too, each a run that returns its seconds: per decoded
    token, per prefill, per fan-out, to first token after a cached prefix."""
    from edged.engine.engine import GenerationOptions

    prefix = engine.new_state()
    engine.extend_prompt(prefix, work.system)

    def ttft() -> None:
        branch = prefix.fork()
        engine.extend_prompt(branch, work.question)
        engine.generate(branch, GenerationOptions(max_tokens=1)).run()

    timings = {"decode": _edged_decode(engine, work),
               "decode_long": _edged_decode(engine, work, work.long_decode_prompt),
               "prefill": lambda: seconds(lambda: engine.extend_prompt(engine.new_state(), work.prefill_prompt)),
               "ttft": lambda: seconds(ttft)}
    if engine.multimodal:
        timings["fanout"] = lambda: seconds(lambda: _fanout(engine, work))
    return timings


def _fanout(engine, work: Workload) -> None:
    """The picture read once and every rule on a fork of it."""
    state = engine.new_state()
    engine.extend_prompt(state, work.image_head, [work.picture])
    for tail in work.rule_tails:
        engine.extend_prompt(state.fork(), tail)


def _rules_seconds(package: Path, threads: int, work: Workload, repeats: int,
                   progress: Callable[[str], None]) -> dict[str, float]:
    """8 rules on a read frame, one fork after another and as the rows of one batch, in turn
    on one engine loaded for rows (for a batch of one it runs the daemon's kernels). NaN, and
    the reason in the progress lines, where the batch does not run (a provider without
    ONNX's Attention, say)."""
    from edged.engine.engine import Engine

    try:
        engine = Engine(package, threads=threads, max_length=1024, rows=True)
        read = engine.new_state()
        engine.extend_prompt(read, work.image_head, [work.picture])
        tails = [engine.encode(tail) for tail in work.rule_tails]
        timed = best_in_turn({"sequential": {"rules": lambda: seconds(lambda: engine.fork_logits(read, tails))},
                              "batched": {"rules": lambda: seconds(lambda: engine.fork_logits(read, tails,
                                                                                              rows=len(tails)))}},
                             repeats)
    except Exception as error:  # onnxruntime's errors are not of one class
        progress(f"rules as one batch: not measured, the batch did not run ({str(error).strip()})")
        return {"rules_sequential": float("nan"), "rules_batched": float("nan")}
    return {"rules_sequential": timed["sequential"]["rules"], "rules_batched": timed["batched"]["rules"]}


def _rules_per_batch_advice(ratio: float) -> str:
    """What the batch's figure means for ``[model] rules_per_batch`` on this machine."""
    if ratio != ratio:
        return "the batch did not run here: keep [model] rules_per_batch = 1"
    if ratio < 1:
        return "the batch is faster here: set [model] rules_per_batch to the camera's rule count"
    return "one after another is faster here: keep [model] rules_per_batch = 1"


def _edged_seconds(engine, work: Workload, repeats: int) -> dict[str, float]:
    """The figures only edged has: the 512-token prefill, the naive loop beside the fan-out
    and the fan-out's token-count bound, the rules batched, frame preparation, and a saved
    session's bytes."""
    from edged.engine.engine import GenerationOptions
    from edged.engine.persist import save_state

    naive_tokens = [0]

    def naive() -> None:
        total = 0
        for tail in work.rule_tails:
            state = engine.new_state()
            engine.extend_prompt(state, work.image_head + tail, [work.picture])
            total += state.length
        naive_tokens[0] = total

    figures = {"prefill_512": best(lambda: engine.extend_prompt(engine.new_state(), work.prefill_512_prompt), repeats)}
    if engine.multimodal:
        figures["naive"] = best(naive, repeats)
        read = engine.new_state()
        engine.extend_prompt(read, work.image_head, [work.picture])
        tails = [engine.encode(tail) for tail in work.rule_tails]
        # the fan-out's tokens: the picture's read once, then each rule's
        figures["fanout_bound"] = naive_tokens[0] / (read.length + sum(map(len, tails)))
        frame = (np.random.default_rng(3).random((384, 512, 3)) * 255).astype(np.uint8)
        figures["frame_prep"] = best(lambda: engine._process(work.image_head, [frame]), repeats)
        figures["png_frame_prep"] = best(lambda: engine._process(work.image_head, [encode_png(frame)]), repeats)
    else:
        figures.update(fanout=float("nan"), naive=float("nan"), fanout_bound=float("nan"),
                       frame_prep=float("nan"), png_frame_prep=float("nan"))
    with tempfile.TemporaryDirectory() as scratch:
        session = engine.new_state()
        engine.extend_prompt(session, work.system)
        engine.extend_prompt(session, work.question)
        engine.generate(session, GenerationOptions(max_tokens=16)).run()
        figures["session_bytes"] = save_state(session, Path(scratch) / "session.safetensors")
    return figures


def _edged_decode(engine, work: Workload, prompt: str | None = None) -> Callable[[], float]:
    """One timed decode of ``work.decode_tokens`` tokens after ``prompt`` (by default
    ``work.decode_prompt``); it returns the seconds per token."""
    from edged.engine.engine import GenerationOptions

    def decode() -> float:
        state = engine.new_state()
        engine.extend_prompt(state, prompt or work.decode_prompt)
        engine.generate(state, GenerationOptions(max_tokens=1)).run()
        started = time.perf_counter()
        generation = engine.generate(state, GenerationOptions(max_tokens=work.decode_tokens)).run()
        return (time.perf_counter() - started) / len(generation.tokens)

    return decode


def _og_decode(og_runner: OgRunner, work: Workload, prompt: str | None = None) -> Callable[[], float]:
    """As _edged_decode, for og.Generator."""
    prompt = prompt or work.decode_prompt
    prompt_tokens = len(og_runner.tokenizer.encode(prompt))

    def decode() -> float:
        generator = og_runner.generator(prompt, None, prompt_tokens + work.decode_tokens + 2)
        generator.generate_next_token()
        started = time.perf_counter()
        count = 0
        while not generator.is_done() and count < work.decode_tokens:
            generator.generate_next_token()
            count += 1
        return (time.perf_counter() - started) / count

    return decode


def _og_timings(og_runner: OgRunner, work: Workload) -> dict[str, Callable[[], float]]:
    """The same figures for og.Generator; the fan-out is its examples' pattern, a fresh
    multimodal Generator per rule."""

    def fanout() -> None:
        for tail in work.rule_tails:
            og_runner.generator(work.image_head + tail, [str(work.picture)], 1024).generate_next_token()

    timings = {"decode": _og_decode(og_runner, work),
               "decode_long": _og_decode(og_runner, work, work.long_decode_prompt),
               "prefill": lambda: seconds(lambda: og_runner.generator(work.prefill_prompt, None, 140).generate_next_token()),
               "ttft": lambda: seconds(lambda: og_runner.generator(work.system + work.question, None, 600).generate_next_token())}
    if og_runner.multimodal:
        timings["fanout"] = lambda: seconds(fanout)
    return timings


def _picture() -> Path:
    path = Path(tempfile.gettempdir()) / "edged-bench-448.png"
    if not path.exists():
        rng = np.random.default_rng(0)
        write_png(path, (rng.random((448, 448, 3)) * 255).astype(np.uint8))
    return path


_PEAK_SCRIPT = """
import sys
from pathlib import Path
package, threads, who = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
words = ("the a door person car yard gate light window street dog box parked open closed near " * 80).split()

def peak_mb():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report its
    # parent's peak (the benchmark's, with both models loaded).
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024

if who == "edged":
    from edged.engine.engine import Engine, GenerationOptions
    engine = Engine(package, threads=threads, max_length=576)
    ids = engine.encode(" ".join(words))

    def run(prompt, new):
        state = engine.new_state()
        engine.extend(state, prompt)
        engine.generate(state, GenerationOptions(max_tokens=new)).run()
else:
    import json
    import onnxruntime_genai as og
    model = og.Model(str(package))
    tokenizer = og.Tokenizer(model)
    ids = tokenizer.encode(" ".join(words))
    multimodal = "embedding" in json.loads((package / "genai_config.json").read_text())["model"]
    processor = model.create_multimodal_processor() if multimodal else None

    def run(prompt, new):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=576, do_sample=False)
        generator = og.Generator(model, params)
        if multimodal:
            generator.set_inputs(processor(tokenizer.decode(prompt), images=None))
        else:
            generator.append_tokens(prompt)
        for _ in range(new):
            generator.generate_next_token()

run(ids[:512], 32)
first = peak_mb()
for start in (0, 128, 256):  # what a daemon does next
    run(ids[start:start + 128], 16)
print(first, peak_mb())
"""


def _peak_rss_mb(package: Path, threads: int, who: str) -> tuple[float, float]:
    """Peak RSS of a fresh process that loads the package, prefills 512 tokens and decodes
    32; then its peak once it has also run three 128-token prompts of 16 tokens each."""
    result = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(package), str(threads), who],
                            capture_output=True, text=True, check=True)
    first, then = result.stdout.split()[-2:]
    return round(float(first), 1), round(float(then), 1)


def format_table(bench: EngineBench) -> str:
    threads = bench.threads or "all"
    same = f"og {threads} thr"
    rows = [
        ("decode tok/s", bench.decode_tok_s, bench.og_same_threads_decode_tok_s, bench.decode_ratio_same_threads,
         ">= 1.0", bench.og_decode_tok_s, bench.decode_ratio),
        ("  after an 800-token prompt", bench.decode_long_tok_s, bench.og_same_threads_decode_long_tok_s,
         bench.decode_long_ratio_same_threads, "",
         bench.og_decode_long_tok_s, bench.decode_long_ratio),
        ("prefill 128 tokens, s", bench.prefill_128_s, bench.og_same_threads_prefill_128_s,
         bench.prefill_ratio_same_threads, ">= 1.0", bench.og_prefill_128_s, bench.prefill_ratio),
        ("8 rules on one 448x448 image, s", bench.fanout_s, bench.og_same_threads_fanout_s,
         bench.fanout_ratio_same_threads, "", bench.og_fanout_s, bench.fanout_ratio),
        ("TTFT after a 500-token prefix, ms", bench.prefix_ttft_ms, bench.og_same_threads_prefix_ttft_ms,
         bench.prefix_ttft_ratio_same_threads, "", bench.og_prefix_ttft_ms, bench.prefix_ttft_ratio),
        ("peak RSS (512-token prompt), MB", bench.peak_rss_mb, "", "", "", bench.og_peak_rss_mb,
         round(bench.og_peak_rss_mb / bench.peak_rss_mb, 2)),
        ("  then 3 more prompts of 128 tokens", bench.peak_rss_more_prompts_mb, "", "", "",
         bench.og_peak_rss_more_prompts_mb, round(bench.og_peak_rss_more_prompts_mb / bench.peak_rss_more_prompts_mb, 2)),
    ]
    waiting = "" if bench.spin is None else f", threads {'spinning' if bench.spin else 'sleeping'} while they wait"
    lines = [f"edged bench engine: {bench.model} ({bench.weights} weights, {bench.huge_page_mib} MiB on huge pages), "
             f"{threads} threads{waiting}, {bench.cpu}",
             f"{'':36} {'edged':>9} {same:>9} {'ratio':>6}  {'goal':<7} {'og as is':>9} {'ratio':>6}"]
    lines += [f"{name:36} {ours:>9} {og_same:>9} {ratio_same:>6}  {goal:<7} {og:>9} {ratio:>6}"
              for name, ours, og_same, ratio_same, goal, og, ratio in rows]
    lines.append(f"{same}: og.Generator told edged's thread count (the headline); og as is: with the package's "
                 "own session options")
    lines.append(f"fan-out: token-count bound {bench.fanout_bound}, edged naive / edged fan-out "
                 f"{bench.fanout_self_ratio} (goal >= 0.85 x bound)")
    if bench.rules_sequential_s == bench.rules_sequential_s:  # a package that reads pictures
        lines.append(f"8 rules on a read frame: one prompt each {bench.rules_sequential_s} s, as the rows of one "
                     f"batch {bench.rules_batched_s} s: batched / sequential {bench.rules_batched_ratio} "
                     f"({_rules_per_batch_advice(bench.rules_batched_ratio)})")
    if bench.contended_spin is not None:
        lines.append(f"decode with one core kept busy: edged {bench.contended_decode_tok_s} tok/s (threads "
                     f"{'spinning' if bench.contended_spin else 'sleeping'}), og as is {bench.og_contended_decode_tok_s}: "
                     f"{bench.contended_decode_ratio} (goal >= 1.1)")
    if bench.frame_read_ratio == bench.frame_read_ratio:
        lines.append(f"vision encoder against float32: encode {bench.encode_s} s vs {bench.float_encode_s} s; "
                     f"frame read {bench.frame_read_s} s vs {bench.float_frame_read_s} s: {bench.frame_read_ratio} "
                     f"(goal <= 0.6); feature cosine mean {bench.image_feature_cosine_mean} (>= 0.995), min "
                     f"{bench.image_feature_cosine_min} (>= 0.98); P(yes) change mean {bench.rule_probability_change_mean}, "
                     f"largest {bench.rule_probability_change_max}")
    if bench.llama:
        lines.append(f"llama.cpp, same checkpoint and threads:{'':6} {'decode tok/s':>13} {'prefill 128 s':>14} "
                     f"{'prefill 512 s':>14} {'peak RSS MB':>12} {'file MB':>8}")
        lines.append(f"  {'edged':42} {bench.decode_tok_s:>13} {bench.prefill_128_s:>14} {bench.prefill_512_s:>14} "
                     f"{bench.peak_rss_mb:>12}")
        for name, figures in bench.llama.items():
            lines.append(f"  {name:42} {figures['decode_tok_s']:>13} {figures['prefill_128_s']:>14} "
                         f"{figures['prefill_512_s']:>14} {figures['peak_rss_mb']:>12} {figures['file_mb']:>8}")
        lines.append(f"  edged / Q4_K_M: decode {bench.llama_decode_ratio} (goal >= 1.3), prefill 128 "
                     f"{bench.llama_prefill_ratio} (goal >= 1.5), prefill 512 {bench.llama_prefill_512_ratio}")
    lines.append(f"saved session (prefix + question + 16 tokens): {bench.session_bytes} bytes")
    lines.append(f"a 512x384 frame made ready for the vision encoder: {bench.frame_prep_ms} ms directly, "
                 f"{bench.png_frame_prep_ms} ms through PNG and ORT GenAI's processor ({bench.frame_prep_ratio}x)")
    return "\n".join(lines)


def as_json(bench: EngineBench) -> str:
    return json.dumps(asdict(bench))

