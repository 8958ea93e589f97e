"""The engine against ORT GenAI's Generator, side by side in one run on one package.

Every figure is a ratio of two timings taken here, in this process, on the same package,
prompt and thread count, so it says how edged compares and not how fast this machine is.
Each timing is the best of ``repeats`` runs after a warm-up.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edged.images import write_png

RULES = [
    "Is a person standing at the door?", "Is a car parked in the driveway?", "Is there a package on the step?",
    "Is the gate open?", "Is a dog in the yard?", "Is it raining?", "Is a light on in the window?",
    "Is someone carrying a box?",
]


@dataclass
class EngineBench:
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
    session_bytes: int
    peak_rss_mb: float
    og_peak_rss_mb: float


def best(run: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` runs, after one warm-up run."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


class OgRunner:
    """ORT GenAI's Generator on the same package: the baseline."""

    def __init__(self, package: Path, threads: int) -> None:
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(package))
        if threads:
            options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
            sections = {"decoder": {"session_options": options}}
            genai = json.loads((package / "genai_config.json").read_text())["model"]
            for part in ("vision", "embedding"):
                if part in genai:
                    sections[part] = {"session_options": options}
            config.overlay(json.dumps({"model": sections}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.multimodal = "embedding" in json.loads((package / "genai_config.json").read_text())["model"]
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


def _prompt_of(engine, tokens: int) -> str:
    """Text of about ``tokens`` tokens for this tokenizer, trimmed to exactly that many."""
    text = _words(tokens * 2)
    ids = engine.encode(text)[:tokens]
    return engine.decode(ids)


def run_engine_bench(package: Path, threads: int = 0, repeats: int = 3, image: Path | None = None) -> EngineBench:
    figures = _side_by_side(package, threads, repeats, image)
    # Peak memory in fresh processes, once this one has let go of both models.
    peak, og_peak = _peak_rss_mb(package, threads, "edged"), _peak_rss_mb(package, threads, "og")
    return EngineBench(**figures, peak_rss_mb=peak, og_peak_rss_mb=og_peak)


def _side_by_side(package: Path, threads: int, repeats: int, image: Path | None) -> dict:
    """Every figure but peak memory, edged and og.Generator loaded in this process."""
    from edged.engine.engine import Engine, GenerationOptions
    from edged.engine.persist import save_state

    engine = Engine(package, threads=threads, max_length=1024)
    og_runner = OgRunner(package, threads)

    # Decode: 64 greedy tokens after a short prompt.
    prompt = engine.chat_prompt([{"role": "user", "content": "Describe the street."}])
    decode_tokens = 64

    def edged_decode() -> None:
        state = engine.new_state()
        engine.extend_prompt(state, prompt)
        engine.generate(state, GenerationOptions(max_tokens=1)).run()
        started = time.perf_counter()
        generation = engine.generate(state, GenerationOptions(max_tokens=decode_tokens)).run()
        edged_decode.seconds = (time.perf_counter() - started) / len(generation.tokens)  # type: ignore[attr-defined]

    def og_decode() -> None:
        generator = og_runner.generator(prompt, None, len(engine.encode(prompt)) + decode_tokens + 2)
        generator.generate_next_token()
        started = time.perf_counter()
        count = 0
        while not generator.is_done() and count < decode_tokens:
            generator.generate_next_token()
            count += 1
        og_decode.seconds = (time.perf_counter() - started) / count  # type: ignore[attr-defined]

    edged_step = min(_repeat(edged_decode, repeats))
    og_step = min(_repeat(og_decode, repeats))

    # Prefill: a 128-token prompt, to the first logits.
    long_prompt = _prompt_of(engine, 128)

    def edged_prefill() -> None:
        engine.extend_prompt(engine.new_state(), long_prompt)

    def og_prefill() -> None:
        generator = og_runner.generator(long_prompt, None, 140)
        generator.generate_next_token()

    edged_prefill_s = best(edged_prefill, repeats)
    og_prefill_s = best(og_prefill, repeats)

    # Fan-out: 8 yes/no rules on one 448x448 picture.
    picture = image or _picture()
    head = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
    tails = [f"{rule} Answer yes or no.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n" for rule in RULES]
    fanout_tokens, naive_tokens = [0], [0]

    def edged_fanout() -> None:
        state = engine.new_state()
        engine.extend_prompt(state, head, [picture])
        total = state.length
        for tail in tails:
            branch = state.fork()
            engine.extend_prompt(branch, tail)
            total += branch.length - state.length
        fanout_tokens[0] = total

    def edged_naive() -> None:
        total = 0
        for tail in tails:
            state = engine.new_state()
            engine.extend_prompt(state, head + tail, [picture])
            total += state.length
        naive_tokens[0] = total

    def og_naive() -> None:
        for tail in tails:
            generator = og_runner.generator(head + tail, [str(picture)], 1024)
            generator.generate_next_token()

    multimodal = engine.multimodal
    fanout_s = best(edged_fanout, repeats) if multimodal else float("nan")
    self_naive_s = best(edged_naive, repeats) if multimodal else float("nan")
    og_fanout_s = best(og_naive, repeats) if multimodal else float("nan")
    bound = naive_tokens[0] / fanout_tokens[0] if multimodal else float("nan")

    # Time to first token after a 500-token system prompt and a 20-token question.
    system = f"<|im_start|>system\n{_prompt_of(engine, 496)}<|im_end|>\n"
    question = f"<|im_start|>user\n{_prompt_of(engine, 12)}<|im_end|>\n<|im_start|>assistant\n"
    prefix = engine.new_state()
    engine.extend_prompt(prefix, system)

    def edged_ttft() -> None:
        branch = prefix.fork()
        engine.extend_prompt(branch, question)
        engine.generate(branch, GenerationOptions(max_tokens=1)).run()

    def og_ttft() -> None:
        generator = og_runner.generator(system + question, None, 600)
        generator.generate_next_token()

    edged_ttft_s = best(edged_ttft, repeats)
    og_ttft_s = best(og_ttft, repeats)

    with tempfile.TemporaryDirectory() as scratch:
        session = prefix.fork()
        engine.extend_prompt(session, question)
        engine.generate(session, GenerationOptions(max_tokens=16)).run()
        session_bytes = save_state(session, Path(scratch) / "session.safetensors")

    return dict(
        model=package.name, threads=threads,
        decode_tok_s=round(1 / edged_step, 1), og_decode_tok_s=round(1 / og_step, 1),
        decode_ratio=round(og_step / edged_step, 2),
        prefill_128_s=round(edged_prefill_s, 4), og_prefill_128_s=round(og_prefill_s, 4),
        prefill_ratio=round(og_prefill_s / edged_prefill_s, 2),
        fanout_s=round(fanout_s, 4), og_fanout_s=round(og_fanout_s, 4),
        fanout_ratio=round(og_fanout_s / fanout_s, 2), fanout_bound=round(bound, 2),
        fanout_self_ratio=round(self_naive_s / fanout_s, 2),
        prefix_ttft_ms=round(edged_ttft_s * 1000, 1), og_prefix_ttft_ms=round(og_ttft_s * 1000, 1),
        prefix_ttft_ratio=round(og_ttft_s / edged_ttft_s, 2),
        session_bytes=session_bytes,
    )


def _repeat(run: Callable[[], None], repeats: int) -> list[float]:
    run()
    seconds = []
    for _ in range(repeats):
        run()
        seconds.append(run.seconds)  # type: ignore[attr-defined]
    return seconds


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
if who == "edged":
    from edged.engine.engine import Engine, GenerationOptions
    engine = Engine(package, threads=threads, max_length=576)
    ids = engine.encode(" ".join(words))[:512]
    state = engine.new_state()
    engine.extend(state, ids)
    engine.generate(state, GenerationOptions(max_tokens=32)).run()
else:
    import json
    import onnxruntime_genai as og
    model = og.Model(str(package))
    tokenizer = og.Tokenizer(model)
    ids = tokenizer.encode(" ".join(words))[:512]
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=576, do_sample=False)
    generator = og.Generator(model, params)
    if "embedding" in json.loads((package / "genai_config.json").read_text())["model"]:
        inputs = model.create_multimodal_processor()(tokenizer.decode(ids), images=None)
        generator.set_inputs(inputs)
    else:
        generator.append_tokens(ids)
    for _ in range(32):
        generator.generate_next_token()
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report its
# parent's peak (the benchmark's, with both models loaded).
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def _peak_rss_mb(package: Path, threads: int, who: str) -> float:
    """Peak RSS of a fresh process loading the package, prefilling 512 tokens, decoding 32."""
    result = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(package), str(threads), who],
                            capture_output=True, text=True, check=True)
    return round(int(result.stdout.strip().splitlines()[-1]) / 1024, 1)


def format_table(bench: EngineBench) -> str:
    rows = [
        ("decode tok/s", bench.decode_tok_s, bench.og_decode_tok_s, bench.decode_ratio, ">= 1.4"),
        ("prefill 128 tokens, s", bench.prefill_128_s, bench.og_prefill_128_s, bench.prefill_ratio, ">= 2.6"),
        ("8 rules on one 448x448 image, s", bench.fanout_s, bench.og_fanout_s, bench.fanout_ratio, ">= 8"),
        ("TTFT after a 500-token prefix, ms", bench.prefix_ttft_ms, bench.og_prefix_ttft_ms, bench.prefix_ttft_ratio, ">= 20"),
        ("peak RSS (512-token prompt), MB", bench.peak_rss_mb, bench.og_peak_rss_mb,
         round(bench.og_peak_rss_mb / bench.peak_rss_mb, 2), "<= 900 MB on 0.8B"),
    ]
    lines = [f"edged bench engine: {bench.model}, {bench.threads or 'all'} threads",
             f"{'':36} {'edged':>10} {'og':>10} {'ratio':>7}  goal"]
    lines += [f"{name:36} {ours:>10} {theirs:>10} {ratio:>7}  {goal}" for name, ours, theirs, ratio, goal in rows]
    lines.append(f"fan-out: token-count bound {bench.fanout_bound}, edged naive / edged fan-out "
                 f"{bench.fanout_self_ratio} (goal >= 0.85 x bound)")
    lines.append(f"saved session (prefix + question + 16 tokens): {bench.session_bytes} bytes")
    return "\n".join(lines)


def as_json(bench: EngineBench) -> str:
    return json.dumps(asdict(bench))

