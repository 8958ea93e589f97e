"""The decoder graph as the engine runs it: the package's graph, rewritten in a child process
(``python -m edged.engine.graph DECODER [--last-logits] [--float32-logits] [--cpu-ops] [--rows]``) so
that the daemon need not carry the onnx module (11 MB) for the rest of its life. The weights
are not touched: the rewritten graph, held in memory, reads the package's own external data
file.

``--last-logits``: the ORT GenAI builder's default decoder applies the lm_head at every
position of a prompt. At 0.8B the lm_head (the tied 248K-token embedding) is a third of the
parameters, so that is about a third of a prompt's compute, and 1 MB of float32 logits per
token of which the engine only ever reads the last row. Packages edged builds leave it out
(``lm_head = "last"`` in their manifest); for any other, the hidden states are cut to the
last position before the lm_head.

``--float32-logits``: a package built for CUDA computes in float16 to the logits, which
the engine reads back as float32 (sampling, P(yes), tokens compared across packages). A Cast
at the end of the graph does that conversion on the device, in microseconds, where numpy's
conversion of 248K float16 logits took 0.48 ms a token on the host; the copy out doubles to
1 MB, still the cheaper side. A graph whose logits are float32 already is left as it is.

``--cpu-ops``: two of onnxruntime 1.32's CPU kernels for the Gated DeltaNet layers call the
logistic function once per element, in a scalar loop. GatedRMSNorm, the norm at the end of each
layer, was 9% of a prompt's time at 0.8B on two cores, more than the DeltaNet recurrence itself
(``edged bench ops``); it is written here as the operators it computes, whose kernels are
vectorized: an RMS norm over each head (SimplifiedLayerNormalization, the scale's length being
the head's size), times SiLU(gate). CausalConvWithState, the short convolution before the
recurrence, applies its SiLU the same way; it keeps its kernel for the convolution (the sums,
and the state it hands on, stay the kernel's own), and the SiLU after it becomes a Sigmoid and
a Mul, which onnxruntime fuses into QuickGelu. The results differ from the kernels' in the last
bits of a float (another order of summing squares, another logistic); in an int4 decoder, whose
MatMulNBits rounds activations to 8 bits, that can move a logit as much as another CPU's kernels
do (docs/engine.md). Every path of the engine runs the same graph, so a state forked, saved or
resumed still gives exactly the tokens the engine gives from scratch. CUDA's kernels are fused
already: the engine asks for this on the CPU only.

``--rows``: forks of one state as the rows of a batch, each a prompt of several tokens over
the state's past, in one call (``Engine.fork_logits``). onnxruntime's CPU GroupQueryAttention
refuses that ("batch_size must be 1 when sequence_length > 1 and past context is given"), so
each one runs under an If: a batch of one takes it as before (a decode step still writes its
KV cache in place), a batch of several takes ONNX's Attention (opset 23, grouped heads) with a
causal mask over past and prompt. Rows shorter than the longest end with padding, which the
attention mask counts out: the lm_head reads each row at its last counted token.
"""

from __future__ import annotations

import argparse
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


def rewritten_decoder(path: Path, last_logits: bool = False, cpu_ops: bool = False,
                      float32_logits: bool = False, rows: bool = False) -> bytes:
    """The decoder at ``path``, serialized, with the rewrites asked for."""
    model = onnx.load(str(path), load_external_data=False)
    if last_logits:
        _cut_to_last_logits(model.graph)
    if rows:
        _batched_rows(model)
    if float32_logits:
        _float32_logits(model.graph)
    if cpu_ops:
        _vectorized_cpu_ops(model.graph)
    return model.SerializeToString()


# -- logits at the last position ------------------------------------------------------------


def _cut_to_last_logits(graph: onnx.GraphProto) -> None:
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


# -- a batch of rows over a past ------------------------------------------------------------


def _batched_rows(model: onnx.ModelProto) -> None:
    """Each GroupQueryAttention under an If on the batch's size, and the logits read at each
    row's own end. A batch of one computes what it did before, bit for bit: the same kernels,
    but for the operator that picks its last position."""
    graph = model.graph
    if not any(node.op_type == "GroupQueryAttention" for node in graph.node):
        raise GraphError("the decoder has no GroupQueryAttention to run rows with")
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 23)  # ONNX's Attention, with grouped heads
    inputs = {value.name: value for value in graph.input}
    rows_of = "inputs_embeds" if "inputs_embeds" in inputs else "input_ids"
    if "attention_mask" not in inputs:
        raise GraphError("the decoder has no attention_mask input")
    graph.initializer.extend([
        helper.make_tensor("edged/rows/0", TensorProto.INT64, [], [0]),
        helper.make_tensor("edged/rows/1", TensorProto.INT64, [], [1]),
        helper.make_tensor("edged/rows/[1]", TensorProto.INT64, [1], [1]),
    ])
    nodes = [
        helper.make_node("Shape", [rows_of], ["edged/rows/count#"], name="edged/rows/Count", start=0, end=1),
        helper.make_node("Squeeze", ["edged/rows/count#"], ["edged/rows/count"], name="edged/rows/Squeeze"),
        helper.make_node("Greater", ["edged/rows/count", "edged/rows/1"], ["edged/rows/several"],
                         name="edged/rows/Several"),
    ]
    for node in graph.node:
        nodes.append(_attention_by_rows(node, inputs) if node.op_type == "GroupQueryAttention" else node)
    del graph.node[:]
    graph.node.extend(nodes)
    _pick_each_rows_last(graph, rows_of)


def _attention_by_rows(node: onnx.NodeProto, inputs: dict[str, onnx.ValueInfoProto]) -> onnx.NodeProto:
    """``node`` as it is for a batch of one row; for several, ONNX's Attention over the past,
    each position seeing the past and the positions before it in its own row."""
    attributes = _attributes(node)
    if attributes.get("do_rotary") or attributes.get("local_window_size", -1) != -1:
        raise GraphError("a GroupQueryAttention with its own rotary embedding or a local window")
    query, key, value, past_key, past_value = node.input[:5]
    name = f"edged/rows/{node.output[0]}"
    if past_key not in inputs:
        raise GraphError(f"a GroupQueryAttention's past key ({past_key}) is not an input of the decoder")
    kind = inputs[past_key].type.tensor_type.elem_type
    scale = {"scale": attributes["scale"]} if attributes.get("scale") else {}
    softcap = {"softcap": attributes["softcap"]} if attributes.get("softcap") else {}
    several = [
        helper.make_node("Shape", [query], [f"{name}/new#"], start=1, end=2),
        helper.make_node("Squeeze", [f"{name}/new#"], [f"{name}/new"]),
        helper.make_node("Shape", [past_key], [f"{name}/past#"], start=2, end=3),
        helper.make_node("Squeeze", [f"{name}/past#"], [f"{name}/past"]),
        helper.make_node("Add", [f"{name}/new", f"{name}/past"], [f"{name}/total"]),
        helper.make_node("Range", ["edged/rows/0", f"{name}/new", "edged/rows/1"], [f"{name}/query_at"]),
        helper.make_node("Add", [f"{name}/query_at", f"{name}/past"], [f"{name}/sees_to"]),
        helper.make_node("Unsqueeze", [f"{name}/sees_to", "edged/rows/[1]"], [f"{name}/sees_to#"]),
        helper.make_node("Range", ["edged/rows/0", f"{name}/total", "edged/rows/1"], [f"{name}/key_at"]),
        helper.make_node("LessOrEqual", [f"{name}/key_at", f"{name}/sees_to#"], [f"{name}/causal"]),
        helper.make_node("Attention", [query, key, value, f"{name}/causal", past_key, past_value],
                         [f"{name}/several/{output}" for output in ("out", "key", "value")],
                         q_num_heads=attributes["num_heads"], kv_num_heads=attributes["kv_num_heads"],
                         **scale, **softcap),
    ]
    one = onnx.NodeProto()
    one.CopyFrom(node)
    one.output[:] = [f"{name}/one/{output}" for output in ("out", "key", "value")]

    def branch(nodes: list[onnx.NodeProto], tag: str) -> onnx.GraphProto:
        outputs = [helper.make_tensor_value_info(f"{name}/{tag}/{output}", kind, None)
                   for output in ("out", "key", "value")]
        return helper.make_graph(nodes, f"{name}/{tag}", [], outputs)

    return helper.make_node("If", ["edged/rows/several"], list(node.output), name=f"{name}/If",
                            then_branch=branch(several, "several"), else_branch=branch([one], "one"))


def _pick_each_rows_last(graph: onnx.GraphProto, rows_of: str) -> None:
    """The lm_head's input taken at each row's last token that the attention mask counts,
    instead of at the last position of all: rows of different lengths end with padding."""
    producer = {output: node for node in graph.node for output in node.output}
    lm_head = _lm_head(producer, graph)
    pick = producer.get(lm_head.input[0])
    if pick is not None and pick.op_type == "Unsqueeze" and producer.get(pick.input[0]) is not None \
            and producer[pick.input[0]].op_type == "Gather":
        hidden = producer[pick.input[0]].input[0]  # the builder's pruned lm_head: Gather(-1), Unsqueeze
    elif pick is not None and pick.op_type == "Slice":
        hidden = pick.input[0]  # _cut_to_last_logits
    else:
        raise GraphError("the lm_head's input is not cut to the last position")
    name = "edged/rows/last"
    picked = [
        helper.make_node("Shape", [rows_of], [f"{name}/new"], start=1, end=2),
        helper.make_node("Shape", ["attention_mask"], [f"{name}/total"], start=1, end=2),
        helper.make_node("ReduceSum", ["attention_mask", "edged/rows/[1]"], [f"{name}/counted"], keepdims=1),
        helper.make_node("Sub", [f"{name}/counted", f"{name}/total"], [f"{name}/from_end"]),
        helper.make_node("Add", [f"{name}/from_end", f"{name}/new"], [f"{name}/count"]),
        helper.make_node("Sub", [f"{name}/count", "edged/rows/[1]"], [f"{name}/at"]),
        helper.make_node("Unsqueeze", [f"{name}/at", "edged/rows/[1]"], [f"{name}/at#"]),
        helper.make_node("Shape", [hidden], [f"{name}/rows"], start=0, end=1),
        helper.make_node("Shape", [hidden], [f"{name}/width"], start=2, end=3),
        helper.make_node("Concat", [f"{name}/rows", "edged/rows/[1]", f"{name}/width"], [f"{name}/shape"], axis=0),
        helper.make_node("Expand", [f"{name}/at#", f"{name}/shape"], [f"{name}/indices"]),
        helper.make_node("GatherElements", [hidden, f"{name}/indices"], [f"{name}/hidden"], axis=1),
    ]
    lm_head.input[0] = f"{name}/hidden"
    for node in [pick] if pick.op_type == "Slice" else [pick, producer[pick.input[0]]]:
        graph.node.remove(node)
    read = _names_read(graph) | {output.name for output in graph.output}
    for node in [node for node in graph.node if node.op_type == "Constant" and node.output[0] not in read]:
        graph.node.remove(node)  # the builder's -1, which onnxruntime would warn of at every load
    at = list(graph.node).index(lm_head)
    for offset, node in enumerate(picked):
        node.name = f"{name}/{node.output[0].rsplit('/', 1)[1]}"
        graph.node.insert(at + offset, node)


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Every value a node of ``graph`` or of its branches reads."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                names |= _names_read(attribute.g)
    return names


# -- logits as float32 ------------------------------------------------------------------------


def _float32_logits(graph: onnx.GraphProto) -> None:
    logits = next((output for output in graph.output if output.name == "logits"), None)
    if logits is None:
        raise GraphError("the decoder has no `logits` output")
    if logits.type.tensor_type.elem_type == TensorProto.FLOAT:
        return
    computed = "edged/float32/computed_logits"
    for node in graph.node:
        node.output[:] = [computed if name == "logits" else name for name in node.output]
        node.input[:] = [computed if name == "logits" else name for name in node.input]
    graph.node.append(helper.make_node("Cast", [computed], ["logits"], name="edged/float32/Cast", to=TensorProto.FLOAT))
    logits.type.tensor_type.elem_type = TensorProto.FLOAT


# -- vectorized CPU operators ----------------------------------------------------------------


def _vectorized_cpu_ops(graph: onnx.GraphProto) -> None:
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        replaced = None
        if node.domain == "com.microsoft" and node.op_type == "GatedRMSNorm":
            replaced = _gated_rms_norm(node, initializers, graph)
        elif node.domain == "com.microsoft" and node.op_type == "CausalConvWithState":
            replaced = _conv_then_silu(node)
        nodes.extend(replaced if replaced is not None else [node])
    del graph.node[:]
    graph.node.extend(nodes)


def _attributes(node: onnx.NodeProto) -> dict:
    return {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}


def _gated_rms_norm(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto],
                    graph: onnx.GraphProto) -> list[onnx.NodeProto] | None:
    """x [.., heads x size] normalized over each head's ``size`` values (the scale's length),
    times the scale, times SiLU(gate) (or sigmoid(gate)), as the kernel computes it."""
    attributes = _attributes(node)
    activation = attributes.get("activation", b"silu")
    scale = initializers.get(node.input[1])
    if activation not in (b"silu", b"sigmoid") or scale is None or len(scale.dims) != 1:
        return None
    x, _, gate = node.input
    name = f"edged/cpu/{node.output[0]}"
    graph.initializer.append(helper.make_tensor(f"{name}/heads#", TensorProto.INT64, [2], [-1, scale.dims[0]]))
    gating = [helper.make_node("Sigmoid", [gate], [f"{name}/sigmoid"], name=f"{name}/Sigmoid")]
    if activation == b"silu":
        gating.append(helper.make_node("Mul", [gate, f"{name}/sigmoid"], [f"{name}/silu"], name=f"{name}/SiLU"))
    return [
        helper.make_node("Shape", [x], [f"{name}/shape"], name=f"{name}/Shape"),
        helper.make_node("Reshape", [x, f"{name}/heads#"], [f"{name}/heads"], name=f"{name}/Heads"),
        helper.make_node("SimplifiedLayerNormalization", [f"{name}/heads", node.input[1]], [f"{name}/normed"],
                         name=f"{name}/Norm", axis=-1, epsilon=attributes.get("epsilon", 1e-5), stash_type=1),
        helper.make_node("Reshape", [f"{name}/normed", f"{name}/shape"], [f"{name}/rows"], name=f"{name}/Rows"),
        *gating,
        helper.make_node("Mul", [f"{name}/rows", gating[-1].output[0]], [node.output[0]], name=f"{name}/Gate"),
    ]


def _conv_then_silu(node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """The convolution by its kernel, without the activation, then SiLU as Sigmoid and Mul."""
    if _attributes(node).get("activation") not in (b"silu", b"swish"):
        return None
    name = f"edged/cpu/{node.output[0]}"
    linear = f"{name}/linear"
    conv = onnx.NodeProto()
    conv.CopyFrom(node)
    conv.output[0] = linear
    for attribute in conv.attribute:
        if attribute.name == "activation":
            attribute.s = b"none"
    return [
        conv,
        helper.make_node("Sigmoid", [linear], [f"{name}/sigmoid"], name=f"{name}/Sigmoid"),
        helper.make_node("Mul", [linear, f"{name}/sigmoid"], [node.output[0]], name=f"{name}/SiLU"),
    ]


def main() -> int:
    """The rewritten decoder on stdout; exit status 3 and the reason on stderr when the
    graph is not one these rewrites know."""
    parser = argparse.ArgumentParser(prog="python -m edged.engine.graph", description=__doc__.split("\n\n")[0])
    parser.add_argument("decoder", type=Path)
    parser.add_argument("--last-logits", action="store_true", help="compute the logits at the last position only")
    parser.add_argument("--float32-logits", action="store_true", help="cast float16 logits to float32 in the graph")
    parser.add_argument("--cpu-ops", action="store_true",
                        help="GatedRMSNorm, and CausalConvWithState's SiLU, as vectorized operators")
    parser.add_argument("--rows", action="store_true",
                        help="take a batch of rows of several tokens over a past, each read at its own end")
    args = parser.parse_args()
    try:
        sys.stdout.buffer.write(rewritten_decoder(args.decoder, args.last_logits, args.cpu_ops, args.float32_logits,
                                                  args.rows))
    except GraphError as error:
        print(error, file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
