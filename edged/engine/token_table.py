"""The embedding's int4 token table, read row by row with ``pread`` instead of run as a session.

A multimodal package's embedding model looks each token up in an int4 table of the whole
vocabulary (GatherBlockQuantized) and puts the image features in place of the image pads.
onnxruntime maps that table from its file, and each token looked up maps the file's pages
around its row into the process. Where the page cache holds large folios (ext4 on Linux 6.16
and later, as on this project's build machines) a row maps 2 MiB: at 0.8B, a few minutes of a
daemon's prompts and answers mapped 135 MiB of the 152 MiB table, all of it counted in the
daemon's RSS. Rows read with ``pread`` come from the page cache without mapping anything.

The package's own embedding stays the reference: a table is used only when the embedding
graph has the shape this module knows and the table gives the session's output bit for bit on
a probe, both checked in a child process (``python -m edged.engine.token_table MODEL``) so that
the onnx module and the session's mapping do not stay in the daemon.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edged.engine.errors import EngineError

DEFAULT_ZERO_POINT = 8
"""MatMulNBits' convention, which GatherBlockQuantized follows for uint8-packed 4-bit data
without zero points: the stored nibble minus 8."""


@dataclass(frozen=True)
class TableLayout:
    """Where the table is in the embedding's external data file, and how it is quantized."""

    data_file: str
    quantized_offset: int
    scales_offset: int
    vocabulary: int
    hidden: int
    block_size: int
    image_token_id: int
    float_type: str = "float32"
    """The scales' type, which is also the embeddings': float16 in a package built for CUDA."""


class TokenTable:
    """Embeddings of token ids, image features in place of the image pads, as the package's
    embedding session computes them."""

    def __init__(self, layout: TableLayout) -> None:
        self.layout = layout
        self._row_bytes = layout.hidden // 2
        self._scales_per_row = layout.hidden // layout.block_size
        self._float = np.dtype(layout.float_type)
        self._fd = os.open(layout.data_file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.close = weakref.finalize(self, os.close, self._fd)
        """Closes the file now rather than when the table is collected."""

    def embed(self, ids: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """``ids`` (batch x sequence) as embeddings (batch x sequence x hidden) of the table's
        float type; the image pads of each row, in order, take the rows of ``features``."""
        ids = np.asarray(ids, dtype=np.int64)
        layout = self.layout
        if ids.size and (ids.min() < 0 or ids.max() >= layout.vocabulary):
            raise EngineError(f"a token id is outside the vocabulary of {layout.vocabulary}")
        unique, where = np.unique(ids, return_inverse=True)
        rows = self._rows(unique)
        embeds = rows[where.reshape(-1)].reshape(*ids.shape, layout.hidden)
        pads = ids == layout.image_token_id
        if pads.any():
            available = 0 if features is None else len(features)
            # The session's rule: the k-th pad of each row takes feature row k; it appends a
            # zero row to the features, which one pad past them takes, and fails past that.
            padded = np.concatenate([np.zeros((0, layout.hidden), self._float) if features is None else features,
                                     np.zeros((1, layout.hidden), self._float)]).astype(self._float, copy=False)
            index = np.maximum(np.cumsum(pads, axis=-1) - 1, 0)
            if index[pads].max() > available:
                raise EngineError(f"{int(pads.sum())} image pads for {available} rows of image features")
            embeds[pads] = padded[index[pads]]
        return embeds

    def _rows(self, tokens: np.ndarray) -> np.ndarray:
        """The dequantized rows of ``tokens``, as GatherBlockQuantized computes them: with float16
        scales too, (nibble - 8) x scale is exact in float32, so rounding it once to float16
        gives the correctly rounded product that a float16 kernel gives."""
        layout, row_bytes, scale_bytes = self.layout, self._row_bytes, self._float.itemsize * self._scales_per_row
        packed = b"".join(os.pread(self._fd, row_bytes, layout.quantized_offset + int(token) * row_bytes)
                          for token in tokens)
        scales = b"".join(os.pread(self._fd, scale_bytes, layout.scales_offset + int(token) * scale_bytes)
                          for token in tokens)
        if len(packed) != len(tokens) * row_bytes or len(scales) != len(tokens) * scale_bytes:
            raise EngineError(f"{layout.data_file} ends within the token table: is the package whole?")
        nibbles = np.frombuffer(packed, dtype=np.uint8).reshape(len(tokens), row_bytes)
        values = np.empty((len(tokens), layout.hidden), dtype=np.float32)
        values[:, 0::2] = nibbles & 0x0F  # the first of each pair in the low nibble
        values[:, 1::2] = nibbles >> 4
        values -= DEFAULT_ZERO_POINT
        scale_rows = np.frombuffer(scales, dtype=self._float).reshape(len(tokens), -1)
        values *= np.repeat(scale_rows.astype(np.float32), layout.block_size, axis=1)
        return values.astype(self._float, copy=False)


def load_token_table(model: Path) -> TokenTable:
    """The table of the embedding model at ``model``, checked in a child process;
    TokenTableRefused, with the child's reason, when the session must run it instead."""
    checked = subprocess.run([sys.executable, "-m", "edged.engine.token_table", str(model)], capture_output=True,
                             text=True)
    if checked.returncode != 0:
        said = checked.stderr.strip().splitlines()
        raise TokenTableRefused(said[-1] if said else f"the check exited with status {checked.returncode}")
    return TokenTable(TableLayout(**json.loads(checked.stdout)))


class TokenTableRefused(Exception):
    """The embedding model is not one this module reproduces; the session runs it."""


def table_layout(model: Path) -> TableLayout:
    """The layout of the token table in the embedding model at ``model``; TokenTableRefused
    when the graph is not the known one."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    lookups = [node for node in graph.node if node.op_type == "GatherBlockQuantized"]
    if len(lookups) != 1 or len(lookups[0].input) != 3 or lookups[0].input[1] != "input_ids":
        raise TokenTableRefused("the embedding does not look tokens up in one int4 table without zero points")
    lookup = lookups[0]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in lookup.attribute}
    if attributes.get("bits", 4) != 4 or attributes.get("gather_axis", 0) != 0 or attributes.get("quantize_axis", 1) != 1:
        raise TokenTableRefused(f"the table is not 4-bit rows quantized along the hidden axis: {attributes}")
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    quantized, scales = initializers.get(lookup.input[0]), initializers.get(lookup.input[2])
    float_types = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}
    if quantized is None or scales is None or quantized.data_type != onnx.TensorProto.UINT8 \
            or scales.data_type not in float_types:
        raise TokenTableRefused("the table is not uint8-packed with float32 or float16 scales")
    where = [_external(quantized), _external(scales)]
    if None in where or where[0][0] != where[1][0]:  # type: ignore[index]
        raise TokenTableRefused("the table is not in one external data file")
    vocabulary, row_bytes = quantized.dims
    block_size = int(attributes.get("block_size", 128))
    if scales.dims != [vocabulary, 2 * row_bytes // block_size]:
        raise TokenTableRefused(f"the scales' shape {list(scales.dims)} does not fit blocks of {block_size}")
    pad_ids = [onnx.helper.get_attribute_value(node.attribute[0]) for node in graph.node
               if node.op_type == "Constant" and any(use.op_type == "Equal" and node.output[0] in use.input
                                                     and "input_ids" in use.input for use in graph.node)]
    if len(pad_ids) != 1:
        raise TokenTableRefused("the embedding has no single image pad id compared with the input ids")
    return TableLayout(data_file=str(model.resolve().parent / where[0][0]), quantized_offset=where[0][1],  # type: ignore[index]
                       scales_offset=where[1][1], vocabulary=int(vocabulary), hidden=2 * int(row_bytes),  # type: ignore[index]
                       block_size=block_size, image_token_id=int(pad_ids[0]),
                       float_type=float_types[scales.data_type])


def _external(tensor: object) -> tuple[str, int] | None:
    entries = {entry.key: entry.value for entry in tensor.external_data}  # type: ignore[attr-defined]
    return (entries["location"], int(entries.get("offset", 0))) if "location" in entries else None


def probe(model: Path, layout: TableLayout) -> None:
    """TokenTableRefused unless the table gives the session's output bit for bit: text alone
    (the first and last token ids among it), and text with three image pads and their rows."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    table = TokenTable(layout)
    rng = np.random.default_rng(0)
    text = rng.integers(0, layout.vocabulary, size=(1, 24))
    text[0, :2] = (0, layout.vocabulary - 1)
    with_pads = text.copy()
    with_pads[0, [3, 4, 9]] = layout.image_token_id
    float_type = np.dtype(layout.float_type)
    features = rng.standard_normal((3, layout.hidden)).astype(float_type)
    bits = np.uint32 if float_type.itemsize == 4 else np.uint16
    try:
        for ids, rows in ((text, np.zeros((0, layout.hidden), float_type)), (with_pads, features)):
            expected = session.run(None, {"input_ids": ids, "image_features": rows})[0]
            if expected.dtype != float_type or not np.array_equal(expected.view(bits), table.embed(ids, rows).view(bits)):
                raise TokenTableRefused("the table's embeddings differ from the embedding session's")
    finally:
        table.close()


def main() -> int:
    """``python -m edged.engine.token_table MODEL``: the checked layout as JSON on stdout."""
    model = Path(sys.argv[1])
    try:
        layout = table_layout(model)
        probe(model, layout)
    except TokenTableRefused as refused:
        print(refused, file=sys.stderr)
        return 3
    print(json.dumps(asdict(layout)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
