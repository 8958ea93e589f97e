"""Prompts with images, made ready for the model by ORT GenAI's own image processor.

ORT GenAI hands out its MultiModalProcessor only from a loaded ``og.Model``, which loads
every ONNX part of the package: about 1 GB for a 0.8B package, a second copy beside the
engine's own sessions. So the processor is opened on a *view* of the package: the same
tokenizer, chat template and processor_config.json, with each ONNX part replaced by a stub
graph of the same inputs and outputs that computes nothing. Its outputs are identical to
the real model's processor (tested), in about 100 MB instead of 1 GB.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SHARED_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json",
                 "special_tokens_map.json", "vocab.json", "merges.txt")


@dataclass(frozen=True)
class ProcessedPrompt:
    """Token ids with each image's pad tokens expanded, and the images' patches."""

    input_ids: list[int]
    pixel_values: np.ndarray | None
    image_grid_thw: np.ndarray | None


class ImageProcessor:
    """Tokenises a prompt and its images exactly as ORT GenAI's multimodal pipeline does."""

    def __init__(self, package: Path) -> None:
        import onnxruntime_genai as og

        self._og = og
        self._view = tempfile.TemporaryDirectory(prefix="edged-processor-")
        view = Path(self._view.name)
        _write_view(package, view)
        self._model = og.Model(str(view))
        self._processor = self._model.create_multimodal_processor()

    def __call__(self, prompt: str, images: list[bytes | str | Path]) -> ProcessedPrompt:
        og = self._og
        if images:
            if all(isinstance(i, bytes) for i in images):
                loaded = og.Images.open_bytes(*images)
            else:
                loaded = og.Images.open(*[str(i) for i in images])
            outputs = self._processor(prompt, images=loaded)
            return ProcessedPrompt(
                input_ids=[int(i) for i in outputs["input_ids"].as_numpy()[0]],
                pixel_values=outputs["pixel_values"].as_numpy(),
                image_grid_thw=outputs["image_grid_thw"].as_numpy().astype(np.int64),
            )
        outputs = self._processor(prompt, images=None)
        return ProcessedPrompt([int(i) for i in outputs["input_ids"].as_numpy()[0]], None, None)

    def close(self) -> None:
        self._view.cleanup()


def _write_view(package: Path, view: Path) -> None:
    """Tokenizer and processor files linked, each ONNX part replaced by a stub, and the
    config without the package's execution providers: the stubs compute nothing, so they run
    on the CPU, and a CUDA package's processor opens where ORT GenAI has no CUDA."""
    for name in _SHARED_FILES:
        if (package / name).exists():
            (view / name).symlink_to((package / name).resolve())
    config = json.loads((package / "genai_config.json").read_text())
    for section in config["model"].values():
        if isinstance(section, dict) and isinstance(section.get("session_options"), dict):
            section["session_options"].pop("provider_options", None)
    (view / "genai_config.json").write_text(json.dumps(config))
    for part in ("decoder", "vision", "embedding"):
        if part in config["model"]:
            filename = config["model"][part]["filename"]
            _write_stub(package / filename, view / filename)


def _write_stub(real: Path, stub: Path) -> None:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(real), load_external_data=False)
    nodes = []
    for output in model.graph.output:
        tensor = output.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim]
        zeros = np.zeros(dims, dtype=helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        nodes.append(helper.make_node("Constant", [], [output.name], value=numpy_helper.from_array(zeros)))
    graph = helper.make_graph(nodes, "stub", list(model.graph.input), list(model.graph.output))
    stub.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=model.ir_version), str(stub))
