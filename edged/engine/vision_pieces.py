"""The vision encoder cut into pieces of a few transformer blocks, run one after another.

The encoder reads a whole frame in one onnxruntime call (1.2 s at 0.8B on two cores, several
at 4B), and a question that arrives meanwhile waits for all of it. Cut between its blocks,
the same operators run in the same order, as several calls, and between two calls the engine
can answer the question (``Engine.extend_prompt``'s ``between``). What one piece hands to the
next (the residual stream, the rotary tables, the attention's sequence bounds) is whatever
tensors cross the cut; nothing is recomputed and no operator changes, so the features are
those of the whole encoder, bit for bit (tests/test_engine.py).

Cutting needs the onnx module, which the daemon should not carry for the rest of its life
(11 MB), so it runs in a child process (``python -m edged.engine.vision_pieces MODEL BLOCKS``)
that writes the pieces to stdout. The weights are not touched: each piece reads the package's
own external data file.
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

BLOCKS_PER_PIECE = 3
"""At 0.8B (12 blocks): the preprocessing, four pieces of three blocks, the merger."""

_BLOCK = re.compile(r"blocks\.(\d+)[./_]")
_MERGER = re.compile(r"[./]merger[./]")


class CutError(Exception):
    """The encoder graph is not one this module knows how to cut; it runs whole."""


def cut_encoder(path: Path, blocks_per_piece: int = BLOCKS_PER_PIECE) -> list[bytes]:
    """The encoder at ``path`` as serialized pieces, in the order they run."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    piece_of_node = _assign(graph, blocks_per_piece)
    count = max(piece_of_node) + 1
    types = _types(model)
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    produced_in = {output: piece_of_node[i] for i, node in enumerate(graph.node) for output in node.output if output}
    graph_outputs = [output.name for output in graph.output]
    used_by_piece = [set() for _ in range(count)]
    for i, node in enumerate(graph.node):
        used_by_piece[piece_of_node[i]].update(_used_names(node))
    pieces = []
    for piece in range(count):
        nodes = [node for i, node in enumerate(graph.node) if piece_of_node[i] == piece]
        used = used_by_piece[piece]
        inputs = [name for name in sorted(used) if name not in initializers
                  and produced_in.get(name, -1) != piece and name != ""]
        later = set().union(*used_by_piece[piece + 1:]) if piece + 1 < count else set()
        outputs = [name for name in sorted(later) if produced_in.get(name) == piece]
        outputs += [name for name in graph_outputs if produced_in.get(name) == piece]
        missing = [name for name in [*inputs, *outputs] if name not in types]
        if missing:
            raise CutError(f"no type is known for {missing[0]}, which crosses a cut")
        piece_graph = helper.make_graph(
            nodes, f"{graph.name}_piece{piece}", [types[name] for name in inputs], [types[name] for name in outputs],
            initializer=[initializers[name] for name in sorted(used) if name in initializers],
        )
        piece_model = helper.make_model(piece_graph, opset_imports=model.opset_import, ir_version=model.ir_version)
        pieces.append(piece_model.SerializeToString())
    return pieces


def _types(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """The type of each tensor the graph names: as the file or onnx's inference gives it, or
    else (outputs of operators onnx has no schema for, such as SkipLayerNormalization) the
    element type of the producing node's first input, which such fused operators keep."""
    import onnx
    from onnx import helper

    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {value.name: value for value in [*graph.input, *inferred.value_info, *graph.value_info, *graph.output]}
    for tensor in graph.initializer:
        types.setdefault(tensor.name, helper.make_tensor_value_info(tensor.name, tensor.data_type, None))
    for node in graph.node:
        source = next((types[name] for name in node.input if name in types), None)
        for output in node.output:
            if output and output not in types and source is not None:
                types[output] = helper.make_tensor_value_info(output, source.type.tensor_type.elem_type, None)
    return types


def _assign(graph: onnx.GraphProto, blocks_per_piece: int) -> list[int]:
    """The piece of each node: the preprocessing (patches, position embeddings, rotary tables)
    first, then the transformer blocks ``blocks_per_piece`` at a time, then the merger. A node
    that belongs to none (fused norms between blocks) runs in the latest piece among its
    inputs' producers, so that no piece needs a later one."""
    named = [_BLOCK.search(node.name) for node in graph.node]
    blocks = [int(match.group(1)) for match in named if match]
    if not blocks:
        raise CutError("the encoder has no transformer blocks named blocks.N to cut between")
    merger = 2 + max(blocks) // blocks_per_piece
    piece_of_tensor: dict[str, int] = {}
    pieces = []
    for node, block in zip(graph.node, named, strict=True):
        earliest = max((piece_of_tensor.get(name, 0) for name in _used_names(node)), default=0)
        if block is not None:
            piece = 1 + int(block.group(1)) // blocks_per_piece
        elif _MERGER.search(node.name):
            piece = merger
        else:
            piece = earliest
        if piece < earliest:
            raise CutError(f"{node.name} needs a tensor computed after it")
        pieces.append(piece)
        piece_of_tensor.update((output, piece) for output in node.output)
    return pieces


def _used_names(node: onnx.NodeProto) -> set[str]:
    """The tensors a node reads: its inputs, and what its subgraphs (Scan, If, Loop) read
    from outside themselves."""
    import onnx

    used = {name for name in node.input if name}
    for attribute in node.attribute:
        for subgraph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
            inner = {value.name for value in subgraph.input} | {tensor.name for tensor in subgraph.initializer}
            inner |= {output for inner_node in subgraph.node for output in inner_node.output}
            used |= {name for inner_node in subgraph.node for name in _used_names(inner_node) if name not in inner}
    return used


def load_pieces(model: Path, blocks_per_piece: int = BLOCKS_PER_PIECE) -> list[bytes]:
    """The pieces of the encoder at ``model``, cut in a child process; CutError with the
    child's reason when it runs whole."""
    cut = subprocess.run([sys.executable, "-m", "edged.engine.vision_pieces", str(model), str(blocks_per_piece)],
                         capture_output=True)
    if cut.returncode != 0:
        said = cut.stderr.decode(errors="replace").strip().splitlines()
        raise CutError(said[-1] if said else f"the cut exited with status {cut.returncode}")
    pieces, data = [], memoryview(cut.stdout)
    while data:
        (size,) = struct.unpack_from("<Q", data)
        pieces.append(bytes(data[8:8 + size]))
        data = data[8 + size:]
    return pieces


def main() -> int:
    """``python -m edged.engine.vision_pieces MODEL BLOCKS``: each piece, 8-byte size first."""
    try:
        pieces = cut_encoder(Path(sys.argv[1]), int(sys.argv[2]))
    except CutError as error:
        print(error, file=sys.stderr)
        return 3
    for piece in pieces:
        sys.stdout.buffer.write(struct.pack("<Q", len(piece)) + piece)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
