"""A written-out power (``x * x``, ``x * (c * x)``; the x**3 of a tanh-approximated GELU as tf2onnx and jax2tf write
it) stays float on ort-cpu: a per-tensor uint8 range over x**3 spends its codes on the largest values and rounds the
small ones to zero (docs/ort_cpu_rules.md 3.21). Read from the graph onnxruntime optimizes for a deployment."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.config import QuantConfig
from onnxq.graph import GraphIndex
from onnxq.integer_region import power_base
from onnxq.pipeline import quantize
from onnxq.rules import TARGET_RULES
from onnxq.validate.latency import optimized_model
from onnxq.validate.metrics import sqnr_db
from tests.helpers import make_model, normal_batches, run

SHAPE = (1, 8, 12, 12)


def gelu_tanh_model() -> onnx.ModelProto:
    """Conv 3x3 (8 -> 16) -> GELU, tanh form written out (0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3)))) ->
    Conv 1x1 (16 -> 8) -> Relu -> Conv 1x1 (8 -> 8) -> Relu -> Conv 1x1 (8 -> 4); the last two are the head the
    ort-cpu target leaves float."""
    rng = np.random.default_rng(5)
    consts = {"w1": (rng.standard_normal((16, 8, 3, 3)) * 1.0), "w2": (rng.standard_normal((8, 16, 1, 1)) * 0.3),
              "w3": (rng.standard_normal((8, 8, 1, 1)) * 0.3), "w4": (rng.standard_normal((4, 8, 1, 1)) * 0.3),
              "c3": np.array(0.044715), "k": np.array(np.sqrt(2 / np.pi)), "one": np.array(1.0),
              "half": np.array(0.5)}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1] * 4),
             helper.make_node("Mul", ["c3", "c"], ["cx"], name="scale_x"),
             helper.make_node("Mul", ["c", "cx"], ["cx2"], name="square"),
             helper.make_node("Mul", ["c", "cx2"], ["cx3"], name="cube"),
             helper.make_node("Add", ["c", "cx3"], ["inner"], name="inner"),
             helper.make_node("Mul", ["k", "inner"], ["arg"], name="arg"),
             helper.make_node("Tanh", ["arg"], ["t"], name="tanh"),
             helper.make_node("Add", ["one", "t"], ["t1"], name="t1"),
             helper.make_node("Mul", ["half", "t1"], ["gate"], name="gate"),
             helper.make_node("Mul", ["c", "gate"], ["g"], name="gelu"),
             helper.make_node("Conv", ["g", "w2"], ["h"], name="conv2"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w3"], ["h3"], name="conv3"),
             helper.make_node("Relu", ["h3"], ["r3"], name="relu3"),
             helper.make_node("Conv", ["r3", "w4"], ["y"], name="conv4")]
    graph = helper.make_graph(nodes, "gelu_tanh", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def _sqnr(model: onnx.ModelProto, quantized: onnx.ModelProto) -> float:
    feeds = normal_batches(SHAPE, 4, seed=9)
    ref = np.concatenate([run(model, f)[0] for f in feeds])
    out = np.concatenate([run(quantized, f)[0] for f in feeds])
    return sqnr_db(ref, out)


def test_power_base_follows_constant_multiples_and_products():
    index = GraphIndex.build(gelu_tanh_model().graph)
    assert {power_base(index, t) for t in ("c", "cx", "cx2", "cx3")} == {"c"}
    assert power_base(index, "gate") == "t1"  # 0.5 * (1 + tanh(...)): the Add ends the chain
    assert power_base(index, "g") == "g"  # x * gate(x) is no power (as x * Sigmoid(x), x * Clip(x + 3))


def test_written_out_powers_stay_float_and_gain(monkeypatch):
    model = gelu_tanh_model()
    calib = normal_batches(SHAPE, 4, seed=0)
    result = quantize(model, calib=calib, config=QuantConfig(target="ort-cpu"))
    optimized = optimized_model(result.model)
    float_muls = [n for n in optimized.graph.node if n.op_type == "Mul"]
    # the square and the cube run in float (both inputs dequantized or float), so x**3 is never rounded to uint8
    assert len(float_muls) >= 2
    with_rule = _sqnr(model, result.model)

    monkeypatch.setitem(TARGET_RULES, "ort-cpu", dataclasses.replace(TARGET_RULES["ort-cpu"], float_powers=False))
    without = quantize(model, calib=calib, config=QuantConfig(target="ort-cpu"))
    assert with_rule > _sqnr(model, without.model) + 10.0  # measured 35.4 vs 18.0 dB
