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
from tests.helpers import assert_equivalent, make_model, normal_batches, run

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


def mlp_block(opset: int = 17, transposed_weights: bool = False) -> onnx.ModelProto:
    """A ConvNeXt block's MLP on channels-last pixels (N, H, W, 16): LayerNorm -> MatMul + b (16 -> 64) -> GELU (erf,
    written out as torch exports it) -> MatMul + b (64 -> 16) -> residual Add. ``transposed_weights``: the weights
    as ``Transpose(W)`` of (out, in) initializers, as torch writes ``nn.Linear`` with ``do_constant_folding=False``."""
    rng = np.random.default_rng(5)
    w1, w2 = (rng.standard_normal((16, 64)) * 0.3).astype(np.float32), (rng.standard_normal((64, 16)) * 0.2)
    inits = [numpy_helper.from_array(np.ones(16, np.float32), "ln_scale"),
             numpy_helper.from_array(np.zeros(16, np.float32), "ln_bias"),
             numpy_helper.from_array(rng.standard_normal(64).astype(np.float32) * 0.1, "b1"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "b2"),
             numpy_helper.from_array(np.array(np.sqrt(2.0), np.float32), "sqrt2"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = [helper.make_node("LayerNormalization", ["x", "ln_scale", "ln_bias"], ["n"], axis=-1, name="ln")
             if opset >= 17 else helper.make_node("Relu", ["x"], ["n"], name="relu")]  # LayerNormalization: opset 17
    if transposed_weights:
        inits += [numpy_helper.from_array(w1.T.copy(), "w1_t"),
                  numpy_helper.from_array(w2.T.astype(np.float32), "w2_t")]
        nodes += [helper.make_node("Transpose", ["w1_t"], ["w1"], perm=[1, 0], name="t1"),
                  helper.make_node("Transpose", ["w2_t"], ["w2"], name="t2")]
    else:
        inits += [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2.astype(np.float32), "w2")]
    nodes += [helper.make_node("MatMul", ["n", "w1"], ["m1"], name="fc1"),
              helper.make_node("Add", ["b1", "m1"], ["h"], name="fc1_bias"),
              helper.make_node("Div", ["h", "sqrt2"], ["d"], name="gelu_div"),
              helper.make_node("Erf", ["d"], ["e"], name="gelu_erf"),
              helper.make_node("Add", ["e", "one"], ["e1"], name="gelu_add"),
              helper.make_node("Mul", ["h", "e1"], ["g0"], name="gelu_mul"),
              helper.make_node("Mul", ["g0", "half"], ["g"], name="gelu_half"),
              helper.make_node("MatMul", ["g", "w2"], ["m2"], name="fc2"),
              helper.make_node("Add", ["b2", "m2"], ["o"], name="fc2_bias"),
              helper.make_node("Add", ["x", "o"], ["y"], name="residual")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6, 6, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph, opset=opset)


def test_channels_last_mlp_fuses_into_qgemm_and_keeps_gelu_whole():
    """Rank-4 MatMul + bias pairs become Reshape -> Gemm -> Reshape: both fuse into QGemm (before, onnxruntime's own
    MatMulAddFusion made float Gemms with run-time weight DQs), and the GELU between them fuses into one Gelu."""
    for transposed in (False, True):
        model = mlp_block(transposed_weights=transposed)
        result = quantize(model, calib=normal_batches((2, 6, 6, 16), 4, seed=0),
                          config=QuantConfig(target="ort-cpu"))
        counts = op_counts(optimized_model(result.model))
        assert counts.get(MS + "QGemm") == 2, counts
        assert counts.get(MS + "Gelu") == 1, counts
        assert not {"Gemm", "MatMul", "Erf", "Div"} & set(counts), counts
        feeds = {"x": np.random.default_rng(9).standard_normal((3, 6, 6, 16)).astype(np.float32)}  # another batch
        ref, got = run(model, feeds)[0], run(result.model, feeds)[0]
        assert got.shape == ref.shape
        assert 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)) > 25


def test_rank_4_rewrite_is_exact_at_any_batch_and_opset():
    """The Gemm reads (rows, K) and its output takes A's leading dimensions back from Shape(A) (Shape's ``end``
    from opset 15, Shape + Slice before), so another batch size runs the same float function."""
    for opset in (13, 17):
        model = mlp_block(opset=opset)
        rewritten = MatMulBiasToGemm((("x", (2, 6, 6, 16)),)).run(model).model
        ops = [n.op_type for n in rewritten.graph.node]
        assert ops.count("Gemm") == 2 and "MatMul" not in ops and ("Slice" in ops) == (opset < 15)
        for batch in (1, 4):
            feeds = {"x": np.random.default_rng(batch).standard_normal((batch, 6, 6, 16)).astype(np.float32)}
            assert_equivalent(model, rewritten, feeds)
