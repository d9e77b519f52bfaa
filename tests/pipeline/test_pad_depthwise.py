"""Depthwise channel groups padded to a multiple of 16 with zero channels on the ort-cpu target
(docs/ort_cpu_rules.md 3.14, onnxq/passes/pad_depthwise_channels.py): the float function is unchanged, groups that
reach a Concat or a residual Add are left alone, and onnxruntime's optimized graph still fuses every Conv."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.config import QuantConfig
from onnxq.passes.pad_depthwise_channels import PadDepthwiseChannels
from onnxq.pipeline import prepare, quantize
from onnxq.rules import TARGET_RULES
from onnxq.validate.latency import op_counts, optimized_model
from tests.helpers import make_model

MS = "com.microsoft."


def _array(rng: np.random.Generator, name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def mobilenet_block(join: str | None = None) -> onnx.ModelProto:
    """Expand 1x1 Conv 8 -> 24 + HardSwish, depthwise 3x3 (24 channels) + Relu, a squeeze-and-excitation gate
    (GlobalAveragePool -> Conv 24 -> 8 -> Relu -> Conv 8 -> 24 -> HardSigmoid -> Mul), project 1x1 Conv 24 -> 16,
    a second depthwise Conv (16 channels, already aligned) and a MatMul head. ``join`` joins the gated output with
    another 24-channel tensor: ``"concat"`` (a Concat with the expand output, sliced back), ``"add"`` (an Add of a
    second graph input), ``"conv"`` (an Add of a second Conv over ``x``: that Conv joins the group)."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "we", "be"], ["e"], name="expand"),
             helper.make_node("HardSwish", ["e"], ["eh"], name="expand_act"),
             helper.make_node("Conv", ["eh", "wd", "bd"], ["d"], name="dw", group=24, pads=[1] * 4),
             helper.make_node("Relu", ["d"], ["dr"], name="dw_act"),
             helper.make_node("GlobalAveragePool", ["dr"], ["g"], name="se_pool"),
             helper.make_node("Conv", ["g", "ws1", "bs1"], ["s1"], name="se_reduce"),
             helper.make_node("Relu", ["s1"], ["s1r"], name="se_relu"),
             helper.make_node("Conv", ["s1r", "ws2", "bs2"], ["s2"], name="se_expand"),
             helper.make_node("HardSigmoid", ["s2"], ["gate"], name="se_gate", alpha=1 / 6),
             helper.make_node("Mul", ["dr", "gate"], ["se"], name="se_mul")]
    inits = [_array(rng, "we", 24, 8, 1, 1), _array(rng, "be", 24), _array(rng, "wd", 24, 1, 3, 3),
             _array(rng, "bd", 24), _array(rng, "ws1", 8, 24, 1, 1), _array(rng, "bs1", 8),
             _array(rng, "ws2", 24, 8, 1, 1), _array(rng, "bs2", 24), _array(rng, "wp", 16, 24, 1, 1),
             _array(rng, "wd2", 16, 1, 3, 3), _array(rng, "wfc", 16 * 64, 5, scale=0.05)]
    project_in = "se"
    if join in ("add", "conv"):
        other = "r" if join == "add" else "side"
        if join == "conv":
            nodes.append(helper.make_node("Conv", ["x", "wside"], ["side"], name="side_conv"))
            inits.append(_array(rng, "wside", 24, 8, 1, 1))
        nodes.append(helper.make_node("Add", ["se", other], ["joined"], name="residual"))
        project_in = "joined"
    elif join == "concat":
        nodes += [helper.make_node("Concat", ["se", "eh"], ["cat"], name="concat", axis=1),
                  helper.make_node("Slice", ["cat", "starts", "ends", "axes"], ["joined"], name="slice")]
        inits += [numpy_helper.from_array(np.array([v], np.int64), n)
                  for n, v in (("starts", 0), ("ends", 24), ("axes", 1))]
        project_in = "joined"
    nodes += [helper.make_node("Conv", [project_in, "wp"], ["p"], name="project"),
              helper.make_node("Conv", ["p", "wd2"], ["d2"], name="dw2", group=16, pads=[1] * 4),
              helper.make_node("Relu", ["d2"], ["d2r"], name="dw2_act"),
              helper.make_node("Flatten", ["d2r"], ["flat"], name="flatten"),
              helper.make_node("MatMul", ["flat", "wfc"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "mobilenet_block",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])] +
                              ([helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 24, 8, 8])]
                               if join == "add" else []),
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph, opset=14)


def _batches(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 8, 8, 8)).astype(np.float32)} for _ in range(count)]


def _run(model: onnx.ModelProto, batch: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, batch)[0]


def _depthwise_groups(model: onnx.ModelProto) -> list[int]:
    return sorted(a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute
                  if a.name == "group" and a.i > 1)


def test_padding_keeps_the_float_function():
    model = mobilenet_block()
    result = PadDepthwiseChannels().run(model)
    assert result.changed and "24->32" in result.notes[0]
    assert _depthwise_groups(result.model) == [16, 32]  # the aligned 16-channel group is left alone
    assert _depthwise_groups(model) == [16, 24]  # the input model is untouched
    weights = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    convs = {n.name: n for n in result.model.graph.node if n.op_type == "Conv"}
    assert weights[convs["expand"].input[1]].shape == (32, 8, 1, 1)
    assert weights[convs["se_reduce"].input[1]].shape == (8, 32, 1, 1)
    assert weights[convs["se_expand"].input[1]].shape == (32, 8, 1, 1)
    assert weights[convs["project"].input[1]].shape == (16, 32, 1, 1)
    assert not np.any(weights[convs["project"].input[1]][:, 24:])
    onnx.checker.check_model(result.model, full_check=True)
    for batch in _batches(3, 1):
        np.testing.assert_allclose(_run(result.model, batch), _run(model, batch), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("join", ["add", "concat"])
def test_group_reaching_a_foreign_tensor_is_not_padded(join: str):
    """An Add of a graph input or a Concat blocks the rewrite of the whole group."""
    model = mobilenet_block(join)
    result = PadDepthwiseChannels().run(model)
    assert not result.changed and _depthwise_groups(result.model) == [16, 24]


def test_residual_add_of_another_conv_pads_that_conv_too():
    model = mobilenet_block("conv")
    result = PadDepthwiseChannels().run(model)
    assert result.changed and _depthwise_groups(result.model) == [16, 32]
    side = next(n for n in result.model.graph.node if n.name == "side_conv")
    assert numpy_helper.to_array(next(i for i in result.model.graph.initializer if i.name == side.input[1])).shape \
        == (32, 8, 1, 1)
    for batch in _batches(2, 1):
        np.testing.assert_allclose(_run(result.model, batch), _run(model, batch), rtol=1e-5, atol=1e-6)


def test_padding_stops_at_a_division_by_a_tensor():
    """Div(x, tensor) could turn a padded zero into an infinity, and 0 * inf is NaN in the consumer."""
    model = mobilenet_block()
    mul = next(n for n in model.graph.node if n.name == "se_mul")
    mul.op_type = "Div"
    assert not PadDepthwiseChannels().run(model).changed


def test_ort_cpu_quantized_padded_block_still_fuses(monkeypatch: pytest.MonkeyPatch):
    """Quantized for ort-cpu, every Conv is still one QLinearConv in onnxruntime's optimized graph, with the padded
    depthwise Conv among them, and nothing stays float; the SQNR matches the unpadded placement."""
    model = mobilenet_block()
    calib, test = _batches(4, 2), _batches(4, 3)
    padded = quantize(model, calib=calib, config=QuantConfig(target="ort-cpu")).model
    monkeypatch.setitem(TARGET_RULES, "ort-cpu",
                        dataclasses.replace(TARGET_RULES["ort-cpu"], pad_depthwise_channels=False))
    plain = quantize(model, calib=calib, config=QuantConfig(target="ort-cpu")).model
    counts, before = op_counts(optimized_model(padded)), op_counts(optimized_model(plain))
    assert counts.get(MS + "QLinearConv") == before.get(MS + "QLinearConv") == 6
    assert counts.get("DequantizeLinear", 0) == before.get("DequantizeLinear", 0)
    assert "Conv" not in counts
    optimized = optimized_model(padded)
    assert 32 in [a.i for n in optimized.graph.node if n.op_type == "QLinearConv" for a in n.attribute
                  if a.name == "group"]
    sqnr = {}
    for name, quantized in (("padded", padded), ("plain", plain)):
        ref = np.concatenate([_run(model, b) for b in test])
        err = ref - np.concatenate([_run(quantized, b) for b in test])
        sqnr[name] = 10 * np.log10(np.sum(ref ** 2) / np.sum(err ** 2))
    print(sqnr)
    assert sqnr["plain"] > 15 and abs(sqnr["padded"] - sqnr["plain"]) < 1.0, sqnr


def test_tensorrt_prepare_does_not_pad():
    prepared, _ = prepare(mobilenet_block(), QuantConfig(target="tensorrt"))
    assert _depthwise_groups(prepared) == [16, 24]
