"""The real daemon, but the first frame's read starts with onnxruntime runs that no stop ends.

Run as ``python stuck_run_daemon.py CONFIG``: the inference thread is inside native calls for
30 s, as a decoder piece of a large model on a slow board can outlast the stop's budget (cut
to 3 s here, from 20). The runs are short and back to back, so that when the stop gives up on
the thread, one of them returns while the interpreter is being torn down: what aborted the
daemon under emulation in CI.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

import edged.service
from edged.agent.tasks import FrameTasks
from edged.service import serve

read = FrameTasks.read


def matmul_chain(size: int = 512, length: int = 4) -> ort.InferenceSession:
    rng = np.random.default_rng(0)
    weights = [helper.make_tensor(f"w{i}", TensorProto.FLOAT, [size, size],
                                  (rng.random(size * size) / size).astype(np.float32)) for i in range(length)]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"y{i - 1}", f"w{i}"], [f"y{i}"]) for i in range(length)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info(f"y{length - 1}", TensorProto.FLOAT, [size, size])], weights)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                .SerializeToString(), options, providers=["CPUExecutionProvider"])


def stuck_read(self, frame, between=None):  # noqa: ANN001, ANN202
    session = matmul_chain()
    x = np.ones((512, 512), dtype=np.float32)
    print("stuck in native runs", flush=True)
    until = time.monotonic() + 30
    while time.monotonic() < until:
        session.run(None, {"x": x})
    return read(self, frame, between)


if __name__ == "__main__":
    FrameTasks.read = stuck_read  # type: ignore[method-assign]
    edged.service.STOP_BUDGET_S = 3.0
    sys.exit(serve(Path(sys.argv[1])))
