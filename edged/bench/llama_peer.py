"""llama.cpp, the engine a user would install instead, on the same checkpoint.

Installed by ``deploy/llama-peer.sh`` (llama-cpp-python built from its sdist with flags for
this CPU, and the GGUF converter of the same llama.cpp commit). The package's checkpoint is
converted by llama.cpp's own converter to f16, then quantized by llama.cpp to Q4_K_M and
Q4_0; the files are kept beside the checkpoint for the next run. Each quantization is
measured in a fresh process (``python -m edged.bench.llama_peer GGUF THREADS``) so that its
peak memory is its own, on the same token ids as edged.

The converter cannot name the random checkpoints' own small tokenizer (it knows tokenizers
by a hash of how they split a test text) and refuses to go on; the benchmark feeds token ids,
never text, so it is told the Qwen2 pre-tokenizer, the real models' own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from edged.bench.timing import best_in_turn

QUANTIZATIONS = ("Q4_K_M", "Q4_0")
SPAN_S = 20.0
"""How long a llama.cpp process's figures are timed, in turn, the best of each counting. On
these virtual machines its speed comes and goes within one process, in stretches of 5 s to
over 20 s: decode at 29 to 32 tok/s, then 42 to 44 again, a 128-token prefill 0.74 s, then
0.60 (0.8B, 2 threads, Q4_K_M), where edged's stayed within 7% over the same minutes. Three
runs in a row could all fall in one slow stretch, and the ratio would flatter edged by 1.4
times."""
CONVERTER_ENV = "EDGED_LLAMA_CPP"


class PeerMissing(Exception):
    """llama.cpp or its converter is not installed."""


def converter_dir() -> Path:
    """Where deploy/llama-peer.sh put llama.cpp's converter (``$EDGED_LLAMA_CPP`` overrides)."""
    folder = Path(os.environ.get(CONVERTER_ENV) or Path(sys.prefix) / "share/edged/llama.cpp")
    if not (folder / "convert_hf_to_gguf.py").exists():
        raise PeerMissing(f"llama.cpp's converter is not in {folder}: run deploy/llama-peer.sh (or set {CONVERTER_ENV})")
    if importlib.util.find_spec("llama_cpp") is None:
        raise PeerMissing("llama-cpp-python is not installed: run deploy/llama-peer.sh")
    return folder


def gguf_files(checkpoint: Path, progress=print) -> dict[str, Path]:
    """The checkpoint as GGUF, per quantization; converted and quantized on first use."""
    folder = converter_dir()
    out = checkpoint.parent / f"{checkpoint.name}-gguf"
    out.mkdir(exist_ok=True)
    f16 = out / "f16.gguf"
    files = {name: out / f"{name}.gguf" for name in QUANTIZATIONS}
    if all(path.exists() for path in files.values()):
        return files
    if not f16.exists():
        progress(f"converting {checkpoint} to GGUF with llama.cpp's converter")
        script = ("import runpy, sys\nimport conversion.base as base\n"
                  "base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'qwen2'\n"
                  "sys.argv = ['convert_hf_to_gguf.py', *sys.argv[1:]]\n"
                  "runpy.run_path('convert_hf_to_gguf.py', run_name='__main__')\n")
        env = {**os.environ, "PYTHONPATH": f"{folder / 'gguf-py'}{os.pathsep}{folder}"}
        partial = f16.with_suffix(".partial")
        result = subprocess.run([sys.executable, "-c", script, str(checkpoint.resolve()), "--outfile", str(partial),
                                 "--outtype", "f16", "--no-nextn"], cwd=folder, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise PeerMissing(f"llama.cpp's converter failed: {result.stderr.strip().splitlines()[-1:]}")
        partial.rename(f16)
    for name, path in files.items():
        if not path.exists():
            progress(f"quantizing to {name} with llama.cpp")
            partial = path.with_suffix(".partial")
            # In a child: llama.cpp reports each tensor on stderr, shown only if it fails.
            result = subprocess.run([sys.executable, "-m", "edged.bench.llama_peer", "quantize", str(f16), str(partial),
                                     name], capture_output=True, text=True)
            if result.returncode != 0:
                raise PeerMissing(f"llama.cpp could not quantize to {name}: {result.stderr.strip()[-500:]}")
            partial.rename(path)
    return files


def _quantize(f16: Path, out: Path, name: str) -> int:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}")
    return int(llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), params))


def measure(gguf: Path, threads: int, decode_prompt: list[int], prefill: dict[str, list[int]],
            decode_tokens: int, repeats: int) -> dict[str, float]:
    """Run in a fresh process: seconds per decoded token, per prefill, and peak RSS in MB."""
    request = json.dumps({"decode_prompt": decode_prompt, "prefill": prefill, "decode_tokens": decode_tokens,
                          "repeats": repeats})
    result = subprocess.run([sys.executable, "-m", "edged.bench.llama_peer", "run", str(gguf), str(threads)],
                            input=request, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PeerMissing(f"llama.cpp's run failed: {result.stderr.strip()[-500:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _run(gguf: Path, threads: int, request: dict) -> dict[str, float]:
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=1024, n_batch=512,
                n_ubatch=512, verbose=False)
    vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))

    def prefill(ids: list[int]) -> float:
        llm.reset()
        started = time.perf_counter()
        llm.eval(ids)
        return time.perf_counter() - started

    def decode() -> float:
        llm.reset()
        llm.eval(request["decode_prompt"])
        llm.eval([int(np.argmax(last_logits()))])  # the first token, as edged's figure leaves it out
        started = time.perf_counter()
        for _ in range(request["decode_tokens"]):
            llm.eval([int(np.argmax(last_logits()))])
        return (time.perf_counter() - started) / request["decode_tokens"]

    runs: dict[str, Callable[[], float]] = {name: (lambda ids=ids: prefill(ids)) for name, ids in request["prefill"].items()}
    runs["decode"] = decode
    figures = best_in_turn({"llama.cpp": runs}, request["repeats"], span_s=SPAN_S)["llama.cpp"]
    figures["peak_rss_mb"] = next(int(line.split()[1]) for line in open("/proc/self/status")
                                  if line.startswith("VmHWM:")) / 1024
    return figures


if __name__ == "__main__":
    if sys.argv[1] == "quantize":
        raise SystemExit(_quantize(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]))
    print(json.dumps(_run(Path(sys.argv[2]), int(sys.argv[3]), json.loads(sys.stdin.read()))))
