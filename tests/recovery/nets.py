"""A small Conv chain with one deliberately fragile node, built in code."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxq.config import QuantConfig, RecoveryOptions
from tests.helpers import init, make_model

NODES = ("conv_a", "conv_b", "conv_frag", "conv_c")
#: the chain's fragility is what cross-layer equalization (on by default) repairs: the tests of the tools that find
#: and keep float a fragile node quantize it without equalization
FRAGILE_CONFIG = QuantConfig(recovery=RecoveryOptions(equalize=False))


def fragile_chain(seed: int = 0) -> onnx.ModelProto:
    """conv_a -> Relu -> conv_b -> Relu -> conv_frag -> Relu -> conv_c, input (N, 4, 8, 8).

    conv_b's output channel 0 is ~300x larger than the others, and conv_frag reads that channel with tiny weights:
    a per-tensor INT8 range for conv_frag's input is set by channel 0 and flattens the seven channels that carry the
    signal, so quantizing conv_frag alone costs far more than any other node.
    """
    rng = np.random.default_rng(seed)
    w_b = (rng.standard_normal((8, 8, 1, 1)) * 0.3).astype(np.float32)
    w_b[0] *= 300.0
    w_frag = (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32)
    w_frag[:, 0] *= 1e-3
    inits = [
        init("w_a", (rng.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32)),
        init("w_b", w_b),
        init("w_frag", w_frag),
        init("w_c", (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32)),
    ]
    pads = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["x", "w_a"], ["a"], name="conv_a", pads=pads),
        helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        helper.make_node("Conv", ["ra", "w_b"], ["b"], name="conv_b"),
        helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
        helper.make_node("Conv", ["rb", "w_frag"], ["f"], name="conv_frag", pads=pads),
        helper.make_node("Relu", ["f"], ["rf"], name="relu_f"),
        helper.make_node("Conv", ["rf", "w_c"], ["y"], name="conv_c"),
    ]
    graph = helper.make_graph(nodes, "fragile_chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    return make_model(graph)


def batches(count: int, seed: int, size: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((size, 4, 8, 8)).astype(np.float32)} for _ in range(count)]
