"""`edged generate`: a user trying a model on a picture from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conftest import TINY, edged

from edged.images import write_png

from edged.engine.engine import Engine, GenerationOptions


def test_generate_json_reports_the_tokens_the_engine_gives(tmp_path: Path) -> None:
    picture = write_png(tmp_path / "p.png", (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8))
    result = edged("generate", "--model", str(TINY / "vl-fp32"), "--image", str(picture), "--max-tokens", "12",
                   "--json", "Is the door open?")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"text", "tokens", "prompt_tokens", "ttft_ms", "tok_per_s"}
    engine = Engine(TINY / "vl-fp32")
    state = engine.new_state()
    prompt = engine.chat_prompt([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is the door open?"}]}])
    engine.extend_prompt(state, prompt, [picture])
    assert report["prompt_tokens"] == state.length
    assert report["tokens"] == engine.generate(state, GenerationOptions(max_tokens=12)).run().tokens


def test_generate_streams_text_and_raw_skips_the_template() -> None:
    streamed = edged("generate", "--model", str(TINY / "text-fp32"), "--max-tokens", "8", "Hello")
    assert streamed.returncode == 0 and streamed.stdout.strip()
    raw = json.loads(edged("generate", "--model", str(TINY / "text-fp32"), "--raw", "--json", "--max-tokens", "4", "Hello").stdout)
    templated = json.loads(edged("generate", "--model", str(TINY / "text-fp32"), "--json", "--max-tokens", "4", "Hello").stdout)
    assert raw["prompt_tokens"] < templated["prompt_tokens"]


def test_generate_with_a_schema_prints_valid_json(tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"open": {"type": "boolean"}}, "required": ["open"],
                                  "additionalProperties": False}))
    result = edged("generate", "--model", str(TINY / "text-int4"), "--json-schema", str(schema), "Is it open?")
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout)["open"], bool)


def test_generate_explains_a_missing_picture(tmp_path: Path) -> None:
    result = edged("generate", "--image", str(tmp_path / "none.png"), "Hi")
    assert result.returncode == 1
    assert "none.png: no such file" in result.stderr


def test_a_cuda_package_that_falls_back_to_the_cpu_says_why(tmp_path: Path) -> None:
    import shutil

    package = tmp_path / "tiny-cuda"
    shutil.copytree(TINY / "text-int4", package)
    manifest = json.loads((package / "edged-model.json").read_text())
    (package / "edged-model.json").write_text(json.dumps({**manifest, "target": "cuda"}))
    result = edged("generate", "--model", str(package), "--max-tokens", "2", "Hello")
    assert result.returncode == 0, result.stderr  # it still runs, on the CPU
    assert "a CUDA package runs on the CPU: this onnxruntime has no CUDAExecutionProvider" in result.stderr
