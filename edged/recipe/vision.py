"""The vision encoder's matrices in int8, for packages that run on a CPU.

mobius-onnx writes the encoder in float32: 403 MB at 0.8B, more than a third of the package
and of the daemon's memory, and each frame's read spends a large part of its time in it.
onnxruntime's dynamic quantization stores each MatMul's weights as int8 with a scale per
output channel and quantizes the activations per call (MatMulInteger). Measured at 0.8B
(docs/engine.md): per-token cosine of the image features against float32 0.998 on average,
0.997 at worst, encode time 0.77x, 112 MB instead of 403. The alternatives measured on the same encoder
lost: MatMulNBits at 8 bits was slower than float32, at 4 bits the cosine fell to 0.96 on
average. Only MatMul is quantized: the encoder's fused attention has no int8 form onnxruntime
loads (its QAttention does not take the grouped-head attribute).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path


def quantize_vision_encoder(folder: Path) -> None:
    """Rewrite ``folder``'s model.onnx (and its model.onnx.data) with int8 MatMul weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="edged-vision-") as scratch:
        out = Path(scratch) / "model.onnx"
        # The quantizer advises its pre-processing pass through the root logger; measured
        # without it (the module's docstring), so the build's output is spared the advice.
        logging.disable(logging.WARNING)
        try:
            quantize_dynamic(folder / "model.onnx", out, weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul"], use_external_data_format=True)
        finally:
            logging.disable(logging.NOTSET)
        _save_as_package_part(out, folder)


def _save_as_package_part(model_path: Path, folder: Path) -> None:
    """The quantizer names its data file after a temporary path; a package names it model.onnx.data."""
    import onnx

    model = onnx.load(str(model_path))
    for name in ("model.onnx", "model.onnx.data"):
        (folder / name).unlink(missing_ok=True)
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=1024)
