"""A fully connected layer written as ``Add(MatMul(A, W), b)`` (paddle2onnx's classifier heads) is planned as a Gemm
on ort-cpu, so onnxruntime fuses it into ``QGemm`` instead of its own float ``MatMulAddFusion`` Gemm with weights
dequantized on every run (docs/ort_cpu_rules.md 3.18). Read from the graph onnxruntime optimizes for a deployment.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.config import QuantConfig
from onnxq.passes.matmul_bias_to_gemm import MatMulBiasToGemm
from onnxq.pipeline import quantize
from onnxq.validate.latency import op_counts, optimized_model
from tests.helpers import assert_equivalent, make_model, normal_batches

MS = "com.microsoft."


def head_model(batch: int | str = 1, bias_shape: tuple[int, ...] = (10,)) -> onnx.ModelProto:
    """Conv 3x3 (8 -> 32) -> Relu -> GlobalAveragePool -> Reshape to (N, 32) -> MatMul (32 -> 10) -> Add(b)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((32, 8, 3, 3)) * 0.2).astype(np.float32), "w_conv"),
             numpy_helper.from_array(np.array([0, 32], np.int64), "shape"),
             numpy_helper.from_array((rng.standard_normal((32, 10)) * 0.3).astype(np.float32), "w_fc"),
             numpy_helper.from_array(rng.standard_normal(bias_shape).astype(np.float32), "b_fc")]
    nodes = [helper.make_node("Conv", ["x", "w_conv"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Reshape", ["g", "shape"], ["flat"], name="reshape"),
             helper.make_node("MatMul", ["flat", "w_fc"], ["m"], name="fc"),
             helper.make_node("Add", ["m", "b_fc"], ["y"], name="fc_bias")]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                           [batch, 8, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def test_matmul_bias_head_fuses_into_qgemm():
    model = head_model()
    result = quantize(model, calib=normal_batches((1, 8, 12, 12), 4, seed=0), config=QuantConfig(target="ort-cpu"))
    optimized = optimized_model(result.model)
    counts = op_counts(optimized)
    assert counts.get(MS + "QGemm") == 1 and "Gemm" not in counts and "MatMul" not in counts
    # no weight dequantized at run time: the only DequantizeLinear left is none at all (QGemm writes float)
    assert counts.get("DequantizeLinear", 0) == 0


def test_symbolic_batch_takes_the_rank_from_the_deployment_shape():
    """The Reshape's output rank is known only with the input pinned (its target shape holds a 0)."""
    model = head_model(batch="n")
    result = quantize(model, calib=normal_batches((2, 8, 12, 12), 4, seed=0), config=QuantConfig(target="ort-cpu"))
    assert op_counts(optimized_model(result.model)).get(MS + "QGemm") == 1


def test_rewrite_is_exact_and_skips_what_is_no_gemm():
    model = head_model(bias_shape=(1, 10))
    rewritten = MatMulBiasToGemm((("x", (1, 8, 12, 12)),)).run(model).model
    assert [n.op_type for n in rewritten.graph.node][-1] == "Gemm"
    assert_equivalent(model, rewritten, {"x": np.random.default_rng(1).standard_normal((1, 8, 12, 12))
                                         .astype(np.float32)})
    # a bias that is not one value per column (broadcast over rows) is no Gemm bias
    wrong = head_model(bias_shape=(10, 1))
    assert not MatMulBiasToGemm((("x", (1, 8, 12, 12)),)).run(wrong).changed


def test_tensorrt_target_keeps_the_matmul():
    result = quantize(head_model(), calib=normal_batches((1, 8, 12, 12), 4, seed=0),
                      config=QuantConfig(target="tensorrt"))
    assert "MatMul" in [n.op_type for n in result.model.graph.node]
