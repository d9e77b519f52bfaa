"""A MaxPool that onnxruntime would run with its channels-first uint8 loop (after a HardSwish at the model's tail)
runs in float between a DQ and a Q of its own; a MaxPool right after a Conv, or with a Conv after it, stays the
channels-last uint8 ``NhwcMaxPool`` (docs/ort_cpu_rules.md 3.15). Read from the graph onnxruntime optimizes for a
deployment (``SessionOptions.optimized_model_filepath``), as in tests/pipeline/test_ort_cpu_fusion.py.
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


def _weights(rng: np.random.Generator, name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def pool_model(activation: str, after: str) -> onnx.ModelProto:
    """Conv(8 -> 32) -> Conv(32 -> 32) -> ``activation`` -> MaxPool 2x2 -> ``after``: "head" (GlobalAveragePool,
    Flatten, Gemm) or "conv" (Conv, Relu, Conv, GlobalAveragePool, Flatten)."""
    rng = np.random.default_rng(12)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1] * 4),
             helper.make_node("Conv", ["c0", "w1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node(activation, ["c1"], ["a"], name="act"),
             helper.make_node("MaxPool", ["a"], ["pooled"], name="pool", kernel_shape=[2, 2], strides=[2, 2])]
    inits = [_weights(rng, "w0", 32, 8, 3, 3, scale=0.2), _weights(rng, "w1", 32, 32, 3, 3, scale=0.1)]
    if after == "head":
        nodes += [helper.make_node("GlobalAveragePool", ["pooled"], ["g"], name="gap"),
                  helper.make_node("Flatten", ["g"], ["flat"], name="flatten"),
                  helper.make_node("Gemm", ["flat", "wfc"], ["y"], name="fc")]
        inits.append(_weights(rng, "wfc", 32, 10))
    else:
        nodes += [helper.make_node("Conv", ["pooled", "w2"], ["c2"], name="conv2", pads=[1] * 4),
                  helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
                  helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3"),
                  helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="gap"),
                  helper.make_node("Flatten", ["g"], ["y"], name="flatten")]
        inits += [_weights(rng, "w2", 32, 32, 3, 3, scale=0.1), _weights(rng, "w3", 16, 32, 1, 1)]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def _calib(model: onnx.ModelProto, count: int = 4, seed: int = 0) -> list[dict[str, np.ndarray]]:
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def _maxpool(optimized: onnx.ModelProto) -> onnx.NodeProto:
    (pool,) = [n for n in optimized.graph.node if n.op_type in ("MaxPool", "NhwcMaxPool")]
    return pool


def test_tail_maxpool_after_hardswish_runs_in_float_between_dq_and_q():
    model = pool_model("HardSwish", "head")
    result = quantize(model, calib=_calib(model), config=QuantConfig(target="ort-cpu"))
    optimized = optimized_model(result.model)
    pool = _maxpool(optimized)
    producers = {o: n for n in optimized.graph.node for o in n.output}
    assert pool.op_type == "MaxPool" and pool.domain in ("", "ai.onnx", "com.microsoft.nchwc")
    assert producers[pool.input[0]].op_type in ("DequantizeLinear", "ReorderInput")  # float input
    readers = [n for n in optimized.graph.node if pool.output[0] in n.input]
    assert [n.op_type for n in readers] in (["QuantizeLinear"], ["ReorderOutput"])
    assert result.plan.tensors["pooled"].shares_scale_with is None  # a range of its own
    counts = op_counts(optimized)
    assert counts.get(MS + "QLinearGlobalAveragePool") == 1 and counts.get(MS + "QGemm") == 1


def test_maxpool_next_to_an_integer_conv_stays_channels_last_uint8():
    """After Conv+Relu (the Relu absorbed into the QLinearConv) and before a Conv, onnxruntime's transpose optimizer
    pushes the layout Transpose into the MaxPool, which then runs as the uint8 ``NhwcMaxPool``: the rule leaves
    those alone."""
    for activation, after in (("Relu", "head"), ("HardSwish", "conv"), ("Relu", "conv")):
        model = pool_model(activation, after)
        result = quantize(model, calib=_calib(model), config=QuantConfig(target="ort-cpu"))
        pool = _maxpool(optimized_model(result.model))
        assert (pool.domain, pool.op_type) == ("com.microsoft", "NhwcMaxPool"), (activation, after)
        assert result.plan.tensors["pooled"].shares_scale_with is not None


def test_tensorrt_maxpool_keeps_its_input_scale():
    model = pool_model("HardSwish", "head")
    result = quantize(model, calib=_calib(model), config=QuantConfig(target="tensorrt"))
    pooled = result.plan.tensors.get("pooled")
    assert pooled is None or pooled.shares_scale_with is not None


def upsampling_head_model() -> onnx.ModelProto:
    """Conv -> Relu -> Conv 3x3 -> Relu -> ConvTranspose (stride 2) -> Sigmoid: the PP-OCRv4 detector's head, whose
    ConvTranspose stays float by default."""
    rng = np.random.default_rng(13)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1] * 4),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], name="head_conv", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("ConvTranspose", ["r1", "wt"], ["up"], name="upsample", strides=[2, 2],
                              kernel_shape=[2, 2]),
             helper.make_node("Sigmoid", ["up"], ["y"], name="prob")]
    inits = [_weights(rng, "w0", 16, 8, 3, 3, scale=0.2), _weights(rng, "w1", 16, 16, 3, 3, scale=0.15),
             _weights(rng, "wt", 16, 1, 2, 2)]
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def test_conv_before_a_float_convtranspose_is_no_head():
    """The ConvTranspose is a weighted op (float by default) that writes no graph output, so the Conv before it
    does not feed "only the float tail after the last weighted op" and is quantized (docs/ort_cpu_rules.md 3.5)."""
    model = upsampling_head_model()
    result = quantize(model, calib=_calib(model), config=QuantConfig(target="ort-cpu"))
    decided = {d.node: d.quantized for d in result.plan.nodes}
    assert decided["head_conv"] and not decided["upsample"]
    counts = op_counts(optimized_model(result.model))
    assert counts.get(MS + "QLinearConv") == 2 and counts.get("ConvTranspose") == 1
