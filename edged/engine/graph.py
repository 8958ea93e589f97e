"""A decoder that computes logits at every position, rewritten to compute them at the last.

The ORT GenAI builder's default decoder applies the lm_head at every position of a prompt.
At 0.8B the lm_head (the tied 248K-token embedding) is a third of the parameters, so that
is about a third of a prompt's compute, and 1 MB of float32 logits per token of which the
engine only ever reads the last row. Packages edged builds leave it out (``lm_head =
"last"`` in their manifest); for any other, the engine loads the decoder rewritten by this
module, run as a child process (``python -m edged.engine.graph DECODER``): the hidden
states are cut to the last position before the lm_head. The weights are not touched: the
rewritten graph, held in memory, reads the package's own external data file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

_MATMULS = ("MatMul", "MatMulNBits", "Gemm")
# Between the lm_head and the logits output there may be element-wise steps (a Cast to
# float32, a soft cap); they apply to whatever positions reach them.
_ELEMENTWISE = ("Cast", "Mul", "Div", "Tanh", "Add", "Identity")


class GraphError(Exception):
    """The decoder graph does not have the shape this rewrite knows."""


def decoder_with_last_logits(path: Path) -> bytes:
    """The decoder at ``path``, serialized, with its logits for the last position only."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    producer = {output: node for node in graph.node for output in node.output}
    lm_head = _lm_head(producer, graph)
    graph.initializer.extend([
        helper.make_tensor("edged/last/starts", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("edged/last/ends", TensorProto.INT64, [1], [2**62]),
        helper.make_tensor("edged/last/axes", TensorProto.INT64, [1], [1]),
    ])
    # Placed just before the lm_head, the new node keeps the topological order ONNX asks for.
    graph.node.insert(list(graph.node).index(lm_head), helper.make_node(
        "Slice", [lm_head.input[0], "edged/last/starts", "edged/last/ends", "edged/last/axes"],
        ["edged/last/hidden"], name="edged/last/Slice",
    ))
    lm_head.input[0] = "edged/last/hidden"
    logits = next(output for output in graph.output if output.name == "logits")
    dims = logits.type.tensor_type.shape.dim
    if len(dims) == 3:
        dims[1].Clear()
        dims[1].dim_value = 1
    return model.SerializeToString()


def _lm_head(producer: dict[str, onnx.NodeProto], graph: onnx.GraphProto) -> onnx.NodeProto:
    if not any(output.name == "logits" for output in graph.output):
        raise GraphError("the decoder has no `logits` output")
    node = producer.get("logits")
    while node is not None and node.op_type in _ELEMENTWISE:
        node = producer.get(node.input[0])
    if node is None or node.op_type not in _MATMULS:
        found = node.op_type if node is not None else "a graph input"
        raise GraphError(f"the decoder's logits do not come from a matrix product (found {found})")
    return node


def main() -> int:
    """``python -m edged.engine.graph DECODER``: the rewritten decoder on stdout, so that a
    daemon can have it without carrying the onnx module for the rest of its life."""
    try:
        sys.stdout.buffer.write(decoder_with_last_logits(Path(sys.argv[1])))
    except GraphError as error:
        print(error, file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
