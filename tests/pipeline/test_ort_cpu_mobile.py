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
from tests.helpers import make_model, run

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


def pooled_stem_model() -> onnx.ModelProto:
    """ShuffleNet's start: Conv(3 -> 6, 3x3, stride 2) -> Relu -> MaxPool(3, stride 2) -> Conv 1x1 -> Relu -> the
    channel shuffle written with shapes read at run time (Shape -> Gather -> Concat -> Reshape -> Transpose ->
    Reshape) -> Conv 1x1 -> Flatten -> MatMul. The stem grows the image 0.5x, so only the MaxPool keeps it integer."""
    rng = np.random.default_rng(4)
    i64 = TensorProto.INT64
    consts = {"zero": [0], "one": [1], "two": [2], "three": [3], "groups": [2], "half": [4], "flat": [8]}
    inits = [_weights(rng, "w0", 6, 3, 3, 3), _weights(rng, "w1", 8, 6, 1, 1), _weights(rng, "w2", 8, 8, 1, 1),
             _weights(rng, "wfc", 8 * 8 * 8, 5)]
    inits += [helper.make_tensor(k, i64, [1], v) for k, v in consts.items()]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="stem", pads=[1] * 4, strides=[2, 2]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("MaxPool", ["r0"], ["m"], name="pool", kernel_shape=[3, 3], pads=[1] * 4,
                              strides=[2, 2]),
             helper.make_node("Conv", ["m", "w1"], ["c1"], name="pw1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Shape", ["r1"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="n", axis=0),
             helper.make_node("Gather", ["s", "two"], ["h"], name="h", axis=0),
             helper.make_node("Gather", ["s", "three"], ["w"], name="w", axis=0),
             helper.make_node("Concat", ["n", "groups", "half", "h", "w"], ["split_shape"], name="split_shape",
                              axis=0),
             helper.make_node("Concat", ["n", "flat", "h", "w"], ["merged_shape"], name="merged_shape", axis=0),
             helper.make_node("Reshape", ["r1", "split_shape"], ["g"], name="split"),
             helper.make_node("Transpose", ["g"], ["t"], name="shuffle", perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t", "merged_shape"], ["sh"], name="merge"),
             helper.make_node("Conv", ["sh", "w2"], ["c2"], name="pw2"),
             helper.make_node("Flatten", ["c2"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "wfc"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "pooled_stem",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def test_a_pooled_stem_stays_integer_so_the_maxpool_runs_channels_last():
    """After a float stem onnxruntime moves the Q in front of the MaxPool and runs it uint8 channels-first (the
    ShuffleNetV2 layout: 1351 us against 81 us float); after a QLinearConv it runs ``NhwcMaxPool``."""
    from onnxq.float_nodes import is_stem_conv
    from onnxq.graph import GraphIndex

    model = pooled_stem_model()
    assert not is_stem_conv(model.graph.node[0], GraphIndex.build(model.graph), 3)
    counts = op_counts(optimized_model(_quantize(model).model))
    assert counts.get(MS + "QLinearConv") == 3 and _float_convs(counts) == 0
    assert counts.get(MS + "NhwcMaxPool") == 1 and "MaxPool" not in counts, counts


def test_shape_readers_take_the_quantized_tensor_not_a_dequantized_copy():
    """The channel shuffle's Shape reads the uint8 tensor the QLinearConv writes: no DequantizeLinear is left in
    the optimized graph just to feed it, and the model computes the same function as through a DQ."""
    model = pooled_stem_model()
    result = _quantize(model)
    shape = next(n for n in result.model.graph.node if n.op_type == "Shape")
    producer = next(n for n in result.model.graph.node if shape.input[0] in n.output)
    assert producer.op_type == "QuantizeLinear"
    assert op_counts(optimized_model(result.model)).get("DequantizeLinear", 0) == 0
    x = {"x": np.random.default_rng(6).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    ref, got = run(model, x)[0], run(result.model, x)[0]
    assert got.shape == ref.shape and 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)) > 25


def test_stripping_the_qdq_restores_the_float_graph_with_shape_readers():
    """``--requantize`` strips Q/DQ first: a Shape reading a QuantizeLinear's output reads the float tensor again
    (the weights stay what their int8 values dequantize to, so the function is FP32's up to weight rounding)."""
    from onnxq.passes.strip_qdq import StripQDQ

    model = pooled_stem_model()
    stripped = StripQDQ().run(_quantize(model).model).model
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in stripped.graph.node}
    x = {"x": np.random.default_rng(7).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    shape = next(n for n in stripped.graph.node if n.op_type == "Shape")
    assert next(n for n in stripped.graph.node if shape.input[0] in n.output).op_type == "Relu"
    ref, got = run(model, x)[0], run(stripped, x)[0]
    assert 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)) > 30
