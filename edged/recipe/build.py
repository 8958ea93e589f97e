"""The recipe that turns a Qwen3.5 checkpoint into the package a device runs.

The decoder comes from the ONNX Runtime GenAI model builder (int4 MatMulNBits, logits for
the last position only); the vision encoder and the embedding from mobius-onnx. Each tool's
output needs fixes before ORT GenAI loads it, applied here by code:
- transformers 5 writes ``tokenizer_class: Qwen3_5Tokenizer``, which ORT GenAI rejects;
- mobius names the model type ``qwen3_5_text`` and describes its own decoder, while the
  package runs the builder's (embeddings excluded, so image features can be fed);
- mobius's processor_config.json lacks the Qwen3-VL image pipeline (0.5 mean and std,
  PatchImage), without which loading fails with "Invalid rank for input: pixel_values";
- the search ``max_length`` defaults to the context length (262144 for real models), which
  makes a Generator allocate gigabytes; it is set to a device-sized default.
Needs the build extra.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.models.manifest import (
    BLOCK_SIZES,
    DEFAULT_BLOCK_SIZE,
    Architecture,
    Manifest,
    Precision,
    Target,
    VisionPrecision,
    fingerprint,
    package_files,
    weights_label,
    write_manifest,
)
from edged.recipe.vision import quantize_vision_encoder

Progress = Callable[[str], None]
DEFAULT_MAX_LENGTH = 2048
TOOLS = ("edged", "onnxruntime-genai", "onnxruntime", "mobius-onnx", "onnx", "transformers", "torch")


class BuildError(Exception):
    """A build step failed; the message holds the tool's last lines of output."""


@dataclass(frozen=True)
class BuildOptions:
    precision: Precision = "int4"
    target: Target = "cpu"
    text_only: bool = False
    all_logits: bool = False
    name: str | None = None
    source_label: str | None = None
    vision_precision: VisionPrecision | None = None
    """int8 or fp32 on a CPU; by default int8 for an int4 package (vision.py), else as mobius writes it."""
    block_size: int = DEFAULT_BLOCK_SIZE
    """int4 weights: how many share one scale. 32 is the builder's default and llama.cpp Q4_0's;
    128 decodes faster on a CPU (docs/engine.md, "int4 blocks") with coarser weights."""

    @property
    def vision(self) -> VisionPrecision:
        """The vision encoder's precision, the default resolved."""
        if self.vision_precision is not None:
            return self.vision_precision
        if self.target == "cuda" and self.precision != "fp32":
            return "fp16"
        return "int8" if self.precision == "int4" else "fp32"

    @property
    def weights(self) -> str:
        return weights_label(self.precision, self.block_size)

    def __post_init__(self) -> None:
        if self.precision == "fp16" and self.target == "cpu":
            raise BuildError(
                "fp16 is for --target cuda: ORT GenAI 0.18's builder makes a CPU fp16 Qwen3.5 "
                "decoder that does not load (it reads a KV cache for layer 0, a DeltaNet layer "
                "that has none); on a CPU use int4 (the default) or fp32"
            )
        if self.precision == "fp32" and self.target == "cuda":
            raise BuildError(
                "fp32 is for --target cpu: ORT GenAI 0.18's builder makes a CUDA fp32 Qwen3.5 decoder "
                "that does not load (it reads a KV cache for layer 0, a DeltaNet layer that has none); "
                "for CUDA use int4 (the default) or fp16"
            )
        if self.vision_precision is not None and self.target == "cuda":
            raise BuildError("--vision-precision is for --target cpu: a CUDA package's vision encoder is fp16")
        if self.block_size not in BLOCK_SIZES:
            raise BuildError(f"--block-size {self.block_size}: choose one of {', '.join(map(str, BLOCK_SIZES))}")
        if self.block_size != DEFAULT_BLOCK_SIZE and self.precision != "int4":
            raise BuildError(f"--block-size is for int4 weights; {self.precision} weights have no blocks")


def build_package(checkpoint: Path, out: Path, options: BuildOptions, progress: Progress = print) -> Manifest:
    """Build a package from a local checkpoint folder into ``out`` (replaced atomically)."""
    hf_config = json.loads((checkpoint / "config.json").read_text())
    vision = "vision_config" in hf_config and not options.text_only
    if options.precision == "int4":
        hidden_size = hf_config.get("text_config", hf_config)["hidden_size"]
        if hidden_size % options.block_size:
            # The token table is quantized along the hidden size, and the embedding shares it.
            raise BuildError(f"--block-size {options.block_size} does not divide the model's hidden size "
                             f"({hidden_size}): choose a block size that does")
    name = options.name or f"{checkpoint.name.lower()}-{'' if vision else 'text-'}{options.weights}-{options.target}"
    staging = out.with_name(f".building-{out.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        manifest = _build_into(staging, checkpoint, hf_config, name, vision, options, progress)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return manifest


def _build_into(
    staging: Path, checkpoint: Path, hf_config: dict[str, Any], name: str, vision: bool,
    options: BuildOptions, progress: Progress,
) -> Manifest:
    steps = 4 if vision else 3
    with tempfile.TemporaryDirectory(prefix="edged-build-") as scratch:
        work = Path(scratch)
        started = time.monotonic()
        progress(f"[1/{steps}] decoder: ONNX Runtime GenAI builder, {options.precision}, {options.target}")
        decoder = _run_builder(checkpoint, work, options, exclude_embeds=vision)
        progress(f"      done in {time.monotonic() - started:.0f} s")
        if vision:
            started = time.monotonic()
            progress(f"[2/{steps}] vision encoder and embedding: mobius-onnx")
            parts = _run_mobius(checkpoint, work, options)
            progress(f"      done in {time.monotonic() - started:.0f} s")
        progress(f"[{steps - 1}/{steps}] assembling the package and fixing its configs")
        if vision:
            _assemble_multimodal(decoder, parts, checkpoint, staging)
            if options.vision == "int8":
                progress("      vision encoder weights to int8")
                quantize_vision_encoder(staging / "vision_encoder")
        else:
            _assemble_text(decoder, staging)
        _fix_tokenizer_config(staging / "tokenizer_config.json")
    progress(f"[{steps}/{steps}] hashing files and writing the manifest")
    files = package_files(staging)
    genai = json.loads((staging / "genai_config.json").read_text())
    manifest = Manifest(
        name=name,
        source=options.source_label or str(checkpoint),
        architecture=_architecture(hf_config.get("text_config", hf_config), genai["model"]["context_length"], vision),
        precision=options.precision,
        target=options.target,
        modalities=["text", "image"] if vision else ["text"],
        lm_head="all" if options.all_logits else "last",
        block_size=options.block_size if options.precision == "int4" else None,
        vision=options.vision if vision else None,
        tools={tool: _version(tool) for tool in TOOLS},
        files=files,
        fingerprint=fingerprint(files),
    )
    write_manifest(staging, manifest)
    return manifest


def _run(command: list[str], log: Path, what: str) -> None:
    # The builder stamps its graphs with `git rev-parse HEAD` run near its install, which finds
    # whatever repository holds the virtualenv: a nonexistent GIT_DIR keeps builds reproducible.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "GIT_DIR": os.devnull + ".git"}
    with log.open("w") as output:
        result = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise BuildError(f"{what} failed (exit {result.returncode}):\n{tail}")


def _run_builder(checkpoint: Path, work: Path, options: BuildOptions, exclude_embeds: bool) -> Path:
    out = work / "builder"
    extra = [f"exclude_embeds={str(exclude_embeds).lower()}", f"prune_lm_head={str(not options.all_logits).lower()}"]
    if options.precision == "int4":
        extra.append(f"block_size={options.block_size}")
    _run(
        [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(out),
         "-p", options.precision, "-e", options.target, "-c", str(work / "builder-cache"),
         "--extra_options", *extra],
        work / "builder.log", "the ONNX Runtime GenAI model builder",
    )
    return out


def _run_mobius(checkpoint: Path, work: Path, options: BuildOptions) -> Path:
    out = work / "mobius"
    dtype = "f16" if options.target == "cuda" and options.precision != "fp32" else "f32"
    # mobius names graphs after the checkpoint path: a fixed relative one keeps builds identical.
    (work / "checkpoint").symlink_to(checkpoint.resolve(), target_is_directory=True)
    _run(
        [sys.executable, "-m", "mobius", "build", "--config", "checkpoint", "--runtime", "ort-genai",
         "--ep", options.target, "--dtype", dtype, str(out)],
        work / "mobius.log", "mobius-onnx",
    )
    return out


def _copy_tokenizer(source: Path, package: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (source / name).exists():
            shutil.copy(source / name, package / name)


def _assemble_text(decoder: Path, package: Path) -> None:
    for item in ("model.onnx", "model.onnx.data", "genai_config.json"):
        if (decoder / item).exists():
            shutil.copy(decoder / item, package / item)
    _copy_tokenizer(decoder, package)
    config = json.loads((package / "genai_config.json").read_text())
    _set_search_defaults(config)
    (package / "genai_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _assemble_multimodal(decoder: Path, parts: Path, checkpoint: Path, package: Path) -> None:
    (package / "decoder").mkdir()
    for item in ("model.onnx", "model.onnx.data"):
        if (decoder / item).exists():
            shutil.copy(decoder / item, package / "decoder" / item)
    for part in ("vision_encoder", "embedding"):
        shutil.copytree(parts / part, package / part)
    _share_quantized_embedding(package / "embedding", package / "decoder")
    _copy_tokenizer(decoder, package)
    config = json.loads((decoder / "genai_config.json").read_text())
    from_mobius = json.loads((parts / "genai_config.json").read_text())["model"]
    model = config["model"]
    model["type"] = "qwen3_5"
    model["decoder"]["filename"] = "decoder/model.onnx"
    model["vision"] = from_mobius["vision"]
    model["embedding"] = from_mobius["embedding"]
    model["image_token_id"] = from_mobius["image_token_id"]
    _set_search_defaults(config)
    (package / "genai_config.json").write_text(json.dumps(config, indent=2) + "\n")
    processor = _image_processor_config(checkpoint)
    (package / model["vision"]["config_filename"]).write_text(json.dumps(processor, indent=2) + "\n")


def _share_quantized_embedding(embedding: Path, decoder: Path) -> None:
    """Give an int4 package's embedding the decoder's int4 token table instead of float32.

    mobius writes the table as float32: 1 GB for Qwen3.5's 248K-token vocabulary, more than
    the rest of a 0.8B package. The builder's int4 decoder already holds the same tied table,
    4-bit with a scale per 32 values, for its lm_head; a GatherBlockQuantized over a copy of
    it gives every text token the embedding the text-only int4 package gives it, in an
    eighth of the memory. Other precisions are left as they are.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    decoder_model = onnx.load(str(decoder / "model.onnx"), load_external_data=False)
    tables = {t.name: t for t in decoder_model.graph.initializer}
    if "lm_head.MatMul.weight_Q4" not in tables:
        return
    quantized, scales = tables["lm_head.MatMul.weight_Q4"], tables["lm_head.MatMul.weight_scales"]
    onnx.external_data_helper.load_external_data_for_tensor(quantized, str(decoder))
    onnx.external_data_helper.load_external_data_for_tensor(scales, str(decoder))
    rows, blocks, block_bytes = quantized.dims
    packed = numpy_helper.to_array(quantized).reshape(rows, blocks * block_bytes)

    model = onnx.load(str(embedding / "model.onnx"))
    graph = model.graph
    gather = next(n for n in graph.node if n.op_type == "Gather" and "embed_tokens" in n.input[0])
    table = next(t for t in graph.initializer if t.name == gather.input[0])
    if list(table.dims) != [rows, blocks * block_bytes * 2]:
        raise BuildError(f"embedding table {list(table.dims)} does not match the decoder's lm_head {list(quantized.dims)}")
    graph.initializer.remove(table)
    graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(packed), "embed_tokens.weight_Q4"),
        numpy_helper.from_array(numpy_helper.to_array(scales), "embed_tokens.weight_scales"),
    ])
    quantized_gather = helper.make_node(
        "GatherBlockQuantized", ["embed_tokens.weight_Q4", gather.input[1], "embed_tokens.weight_scales"],
        list(gather.output), name="embed_tokens/GatherBlockQuantized", domain="com.microsoft",
        bits=4, block_size=block_bytes * 2, gather_axis=0, quantize_axis=1,
    )
    position = list(graph.node).index(gather)
    graph.node.remove(gather)
    graph.node.insert(position, quantized_gather)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    (embedding / "model.onnx.data").unlink()
    onnx.save(model, str(embedding / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=1024)


def _set_search_defaults(config: dict[str, Any]) -> None:
    search = config.setdefault("search", {})
    search["max_length"] = min(DEFAULT_MAX_LENGTH, config["model"]["context_length"])
    search["do_sample"] = False
    search["past_present_share_buffer"] = True


def _image_processor_config(checkpoint: Path) -> dict[str, Any]:
    """ORT GenAI's Qwen3-VL image pipeline, with the checkpoint's own sizes and statistics."""
    path = checkpoint / "preprocessor_config.json"
    hf = json.loads(path.read_text()) if path.exists() else {}
    size = hf.get("size") or {}
    patch, merge = hf.get("patch_size", 16), hf.get("merge_size", 2)

    def step(name: str, kind: str, **attrs: Any) -> dict[str, Any]:
        operation: dict[str, Any] = {"name": name, "type": kind}
        if attrs:
            operation["attrs"] = attrs
        return {"operation": operation}

    return {"processor": {"name": "qwen3_vl_image_processor", "transforms": [
        step("decode_image", "DecodeImage", color_space="RGB"),
        step("convert_to_rgb", "ConvertRGB"),
        step("resize", "Resize", width=448, height=448, smart_resize=1, patch_size=patch, merge_size=merge,
             min_pixels=size.get("shortest_edge", hf.get("min_pixels", 65536)),
             max_pixels=size.get("longest_edge", hf.get("max_pixels", 16777216))),
        step("rescale", "Rescale", rescale_factor=hf.get("rescale_factor", 1 / 255)),
        step("normalize", "Normalize", mean=hf.get("image_mean", [0.5] * 3), std=hf.get("image_std", [0.5] * 3),
             qwen3_vl=1),
        step("patch_image", "PatchImage", patch_size=patch, merge_size=merge,
             temporal_patch_size=hf.get("temporal_patch_size", 2)),
    ]}}


def _fix_tokenizer_config(path: Path) -> None:
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") not in ("Qwen2Tokenizer", "GPT2Tokenizer", "PreTrainedTokenizerFast"):
        config["tokenizer_class"] = "Qwen2Tokenizer"
    path.write_text(json.dumps(config, indent=2) + "\n")


def _architecture(text: dict[str, Any], context_length: int, vision: bool) -> Architecture:
    fields = {key: text[key] for key in Architecture.model_fields if key in text}
    fields.update(model_type=text.get("model_type", "qwen3_5_text"), context_length=context_length, vision=vision)
    return Architecture(**fields)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# What `edged models build --random SIZE` makes: the test model's packages, or a benchmark's.
RANDOM_PACKAGES: dict[str, list[tuple[str, BuildOptions]]] = {
    "tiny": [
        ("text-fp32", BuildOptions(precision="fp32", text_only=True)),
        ("text-int4", BuildOptions(precision="int4", text_only=True)),
        ("vl-fp32", BuildOptions(precision="fp32")),
        ("vl-int4", BuildOptions(precision="int4")),
        # Larger blocks run other kernels: every platform's proof checks them too (deploy/platform_check.py).
        ("text-int4-b64", BuildOptions(precision="int4", text_only=True, block_size=64)),
    ],
    "0.8b": [
        ("text-int4", BuildOptions(precision="int4", text_only=True)),
        ("vl-int4", BuildOptions(precision="int4")),
    ],
    # The larger sizes are measured as a camera runs them: one vision-language package each.
    "2b": [("vl-int4", BuildOptions(precision="int4"))],
    "4b": [("vl-int4", BuildOptions(precision="int4"))],
}


def build_random_packages(out: Path, size: str, progress: Progress = print, keep_checkpoint: bool = False,
                          all_logits: bool = False, vision_precision: VisionPrecision | None = None,
                          target: Target = "cpu", block_size: int = DEFAULT_BLOCK_SIZE) -> list[Manifest]:
    """A random checkpoint of ``size`` and its packages, as ``out/<package>`` folders, for
    ``target``'s execution provider: for CUDA every package computes in float16, and the
    float ones are fp16 (text-fp16, vl-fp16). ``block_size`` applies to the int4 packages
    that do not name their own (the tiny set's text-int4-b64); one that would repeat another is
    left out."""
    from dataclasses import replace

    from edged.recipe.checkpoint import SEED, build_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edged-checkpoint-") as scratch:
        checkpoint = out / "checkpoint" if keep_checkpoint else Path(scratch) / "checkpoint"
        progress(f"random {size} checkpoint (seed {SEED})")
        build_checkpoint(checkpoint, size)
        manifests = []
        for folder, options in RANDOM_PACKAGES[size]:
            if target == "cuda" and options.precision == "fp32":  # CUDA's float is fp16 (BuildOptions)
                folder, options = folder.replace("fp32", "fp16"), replace(options, precision="fp16", target=target)
            blocks = options.block_size
            if options.precision == "int4" and blocks == DEFAULT_BLOCK_SIZE:
                blocks = block_size
            kind = "text" if options.text_only else "vl"
            name = f"edged-{size}-{kind}-{weights_label(options.precision, blocks)}"
            name += "" if target == "cpu" else f"-{target}"
            if any(manifest.name == name for manifest in manifests):
                continue
            progress(f"package {folder}")
            named = replace(options, name=name, target=target, source_label=f"random {size} checkpoint, seed {SEED}",
                            all_logits=all_logits, vision_precision=vision_precision, block_size=blocks)
            manifests.append(build_package(checkpoint, out / folder, named, progress))
    return manifests


def fetch_checkpoint(source: str, progress: Progress = print) -> Path:
    """A local checkpoint folder as it is, or a hub id downloaded into the hub cache."""
    if Path(source).is_dir():
        return Path(source).resolve()  # the builder runs in a folder of its own
    from huggingface_hub import snapshot_download

    progress(f"downloading {source} from the Hugging Face hub")
    return Path(snapshot_download(
        source,
        allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "tokenizer*"],
    ))
