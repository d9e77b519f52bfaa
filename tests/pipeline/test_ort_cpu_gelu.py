"""A written-out erf GELU stays whole on ort-cpu, so onnxruntime fuses it into one Gelu kernel (rule 3.24)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.config import QuantConfig
from onnxq.gelu_pattern import erf_gelu_nodes
from onnxq.graph import GraphIndex
from onnxq.pipeline import quantize
from onnxq.validate.latency import op_counts, optimized_model
from tests.helpers import make_model, normal_batches, run

MS = "com.microsoft."


def gelu_mlp(half_first: bool = False, scale_op: str = "Div", scale: float = float(np.sqrt(2.0))) -> onnx.ModelProto:
    """(N, 16) -> Gemm (16 -> 64) -> GELU written out -> Gemm (64 -> 16): the rank-2 MLP of a classifier head."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 64)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal(64) * 0.1).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((64, 16)) * 0.2).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float32), "b2"),
             numpy_helper.from_array(np.array(scale, np.float32), "s"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node(scale_op, ["h", "s"], ["d"], name="scale"),
             helper.make_node("Erf", ["d"], ["e"], name="erf"),
             helper.make_node("Add", ["one", "e"], ["e1"], name="plus_one")]
    if half_first:
        nodes += [helper.make_node("Mul", ["h", "half"], ["hh"], name="half"),
                  helper.make_node("Mul", ["hh", "e1"], ["g"], name="product")]
    else:
        nodes += [helper.make_node("Mul", ["e1", "h"], ["g0"], name="product"),
                  helper.make_node("Mul", ["g0", "half"], ["g"], name="half")]
    nodes.append(helper.make_node("Gemm", ["g", "w2", "b2"], ["y"], name="fc2"))
    graph = helper.make_graph(nodes, "gelu_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def test_both_exported_orders_are_recognised_and_a_near_miss_is_not():
    whole = {"scale", "erf", "plus_one", "product", "half"}
    for model in (gelu_mlp(), gelu_mlp(half_first=True), gelu_mlp(scale_op="Mul", scale=float(1 / np.sqrt(2.0)))):
        assert erf_gelu_nodes(model.graph, GraphIndex.build(model.graph)) == whole
    not_gelu = gelu_mlp(scale=1.2)  # erf(x / 1.2): no GELU, nothing onnxruntime would fuse
    assert erf_gelu_nodes(not_gelu.graph, GraphIndex.build(not_gelu.graph)) == set()


def test_gelu_between_quantized_gemms_fuses_into_one_float_kernel():
    for half_first in (False, True):
        model = gelu_mlp(half_first=half_first)
        result = quantize(model, calib=normal_batches((8, 16), 4, seed=0), config=QuantConfig(target="ort-cpu"))
        counts = op_counts(optimized_model(result.model))
        assert counts.get(MS + "QGemm") == 2 and counts.get(MS + "Gelu") == 1, counts
        assert not {"Erf", "Div", MS + "QLinearMul"} & set(counts), counts
        feeds = {"x": np.random.default_rng(4).standard_normal((5, 16)).astype(np.float32)}
        ref, got = run(model, feeds)[0], run(result.model, feeds)[0]
        assert 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)) > 25
