"""MobileNet-style graphs on the ort-cpu target: the body runs channels-last in integer, the image stem in float.

Read from the graph onnxruntime optimizes for a deployment (``SessionOptions.optimized_model_filepath``), as in
tests/pipeline/test_ort_cpu_fusion.py; docs/ort_cpu_rules.md 3.7, 3.9 and 3.10 give the measurements behind it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.config import QuantConfig
from onnxq.pipeline import quantize
from onnxq.validate.latency import op_counts, optimized_model
from tests.helpers import make_model

MS = "com.microsoft."


def _weights(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)


def mobile_model(channels: int) -> onnx.ModelProto:
    """Conv(channels -> 8, stride 2) -> HardSwish -> depthwise -> HardSwish -> pointwise -> HardSwish
    -> depthwise -> Relu -> squeeze-and-excitation (GAP, Conv, Relu, Conv, HardSigmoid, Mul) -> pointwise
    -> Flatten -> MatMul. The SE's second Conv has 2 input channels but reads no image: it is no stem."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="stem", pads=[1] * 4, strides=[2, 2]),
             helper.make_node("HardSwish", ["c0"], ["h0"], name="hs0"),
             helper.make_node("Conv", ["h0", "wd1"], ["d1"], name="dw1", group=8, pads=[1] * 4),
             helper.make_node("HardSwish", ["d1"], ["h1"], name="hs1"),
             helper.make_node("Conv", ["h1", "wp1"], ["p1"], name="pw1"),
             helper.make_node("HardSwish", ["p1"], ["h2"], name="hs2"),
             helper.make_node("Conv", ["h2", "wd2"], ["d2"], name="dw2", group=16, pads=[1] * 4),
             helper.make_node("Relu", ["d2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Conv", ["g", "wf1"], ["f1"], name="fc1"),
             helper.make_node("Relu", ["f1"], ["rf1"], name="relu_fc1"),
             helper.make_node("Conv", ["rf1", "wf2"], ["f2"], name="fc2"),
             helper.make_node("HardSigmoid", ["f2"], ["gate"], name="hsig", alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["r2", "gate"], ["se"], name="excite"),
             helper.make_node("Conv", ["se", "wp2"], ["p2"], name="pw2"),
             helper.make_node("Flatten", ["p2"], ["flat"], name="flatten"),
             helper.make_node("MatMul", ["flat", "wfc"], ["y"], name="fc")]
    inits = [_weights(rng, "w0", 8, channels, 3, 3), _weights(rng, "wd1", 8, 1, 3, 3),
             _weights(rng, "wp1", 16, 8, 1, 1), _weights(rng, "wd2", 16, 1, 3, 3), _weights(rng, "wf1", 2, 16, 1, 1),
             _weights(rng, "wf2", 16, 2, 1, 1), _weights(rng, "wp2", 8, 16, 1, 1), _weights(rng, "wfc", 8 * 36, 5)]
    graph = helper.make_graph(nodes, "mobile", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [1, channels, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def _quantize(model: onnx.ModelProto):
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    return quantize(model, calib=calib, config=QuantConfig(target="ort-cpu"))


def _float_convs(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k.endswith("Conv") and "QLinear" not in k)


def test_mobile_body_runs_in_integer_without_float_islands():
    """Four input channels (no image stem): every Conv (depthwise too), HardSwish, HardSigmoid and the SE product
    run in integer kernels, channels-last, with no DQ/float op/Q in between (depthwise-input equalization, on by
    default, adds no Mul on this target: docs/ort_cpu_rules.md 3.12)."""
    result = _quantize(mobile_model(4))
    counts = op_counts(optimized_model(result.model))
    assert counts.get(MS + "QLinearConv") == 7 and _float_convs(counts) == 0  # stem, 2 dw, 2 pw, 2 SE
    # Add of hs0, hs1, hs2 and hsig (Clip absorbed); Mul of hs0, hs1, hs2 and the SE product (every alpha folded)
    assert counts.get(MS + "QLinearAdd") == 4 and counts.get(MS + "QLinearMul") == 4
    assert counts.get(MS + "QLinearGlobalAveragePool") == 1
    assert counts.get("Transpose", 0) <= 2 and counts.get("DequantizeLinear", 0) == 0
    for float_op in ("HardSwish", "HardSigmoid", "Mul", "Add", "Clip"):
        assert float_op not in counts, counts
    assert all(d.quantized for d in result.plan.nodes), [d for d in result.plan.nodes if not d.quantized]


def test_image_stem_stays_float_with_its_depthwise_conv_and_fused_activations():
    """Three input channels: the stem Conv and the depthwise Conv after it stay float (MLAS NCHWc kernels with the
    HardSwish fused in), their HardSwish is not rewritten; the body from the first pointwise Conv is integer."""
    result = _quantize(mobile_model(3))
    counts = op_counts(optimized_model(result.model))
    assert _float_convs(counts) == 2 and counts.get(MS + "QLinearConv") == 5
    assert "HardSigmoid" not in counts and "Mul" not in counts  # hs0/hs1 fused into the float Convs
    assert counts.get(MS + "QLinearAdd") == 2 and counts.get(MS + "QLinearMul") == 2
    assert counts.get("QuantizeLinear") == 1 and counts.get("DequantizeLinear", 0) == 0  # one Q after the prefix
    reasons = {d.node: d.reason for d in result.plan.nodes if not d.quantized}
    assert set(reasons) == {"stem", "dw1"} and "image" in reasons["stem"] and "stem" in reasons["dw1"]
    assert {"w0", "wd1"} <= {i.name for i in result.model.graph.initializer}  # float weights kept


def test_a_stem_whose_output_outgrows_the_image_is_quantized():
    """ResNet's 7x7 stem (3 -> 64 channels, stride 2: 5.3x the image's values) stays integer: a float stem would
    move the first Q onto its much larger output (onnxq/float_nodes.py, MAX_STEM_GROWTH)."""
    from onnxq.float_nodes import is_stem_conv
    from onnxq.graph import GraphIndex

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="stem", pads=[3] * 4, strides=[2, 2]),
             helper.make_node("Conv", ["x", "v"], ["z"], name="mobile_stem", pads=[1] * 4, strides=[2, 2])]
    graph = helper.make_graph(nodes, "stems", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in ("y", "z")],
                              [_weights(rng, "w", 64, 3, 7, 7), _weights(rng, "v", 16, 3, 3, 3)])
    index = GraphIndex.build(graph)
    assert not is_stem_conv(graph.node[0], index, 3) and is_stem_conv(graph.node[1], index, 3)
