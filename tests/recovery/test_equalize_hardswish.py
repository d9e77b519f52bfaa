"""Depthwise-input equalization through a written-out HardSwish (ort-cpu): exact in float, taken only where the
depthwise Conv's input quantization would ruin it, and worth a measured margin there (docs/ort_cpu_rules.md 3.27)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.config import QuantConfig
from onnxq.graph import GraphIndex
from onnxq.pipeline import quantize
from onnxq.recovery.channel_scale import ChannelTarget, hardswish_producer
from onnxq.recovery.equalization import (
    MAX_HARDSWISH_EQUALIZED_SQNR_DB,
    depthwise_input_sqnr_db,
    equalize_depthwise,
    equalize_model,
)
from onnxq.validate.latency import op_counts, optimized_model
from tests.helpers import assert_equivalent, make_model, run

MS = "com.microsoft."
C = 8


def pointwise_hardswish_depthwise(second_reader: bool = False, quiet: float = 0.02) -> onnx.ModelProto:
    """x (1, 4, 12, 12) -> Conv 1x1 (4 -> 8) -> x * Clip(x + 3, 0, 6) (the ort-cpu HardSwish rewrite, 1/6 folded
    away) -> depthwise 3x3 -> Conv 1x1 (8 -> 4) -> Relu -> Conv 1x1 (4 -> 2). The first Conv's channels 0-3 are
    ``quiet`` times the others, and the depthwise Conv multiplies them back (as a folded BatchNorm does): a per-tensor
    input step crushes them. ``second_reader``: the HardSwish output is read by another Conv too."""
    rng = np.random.default_rng(0)
    rows = np.ones(C, np.float32)
    rows[:4] = quiet
    w1 = (rng.standard_normal((C, 4, 1, 1)) * 0.5).astype(np.float32) * rows[:, None, None, None]
    dw = (rng.standard_normal((C, 1, 3, 3)) * 0.3).astype(np.float32) / rows[:, None, None, None]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.zeros(C, np.float32), "b1"),
             numpy_helper.from_array(np.array(3.0, np.float32), "three"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
             numpy_helper.from_array(dw, "wd"),
             numpy_helper.from_array((rng.standard_normal((4, C, 1, 1)) * 0.3).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.standard_normal((2, 4, 1, 1)) * 0.3).astype(np.float32), "w3")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["p"], name="pw1"),
             helper.make_node("Add", ["p", "three"], ["shifted"], name="hs_add"),
             helper.make_node("Clip", ["shifted", "lo", "hi"], ["clipped"], name="hs_clip"),
             helper.make_node("Mul", ["p", "clipped"], ["h"], name="hs_mul"),
             helper.make_node("Conv", ["h", "wd"], ["d"], name="dw", group=C, pads=[1] * 4),
             helper.make_node("Conv", ["d", "w2"], ["q"], name="pw2"),
             helper.make_node("Relu", ["q"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w3"], ["y"], name="head")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if second_reader:
        inits.append(numpy_helper.from_array(np.ones((1, C, 1, 1), np.float32), "w4"))
        nodes.append(helper.make_node("Conv", ["h", "w4"], ["side"], name="side"))
        outputs.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "pw_hs_dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                               [1, 4, 12, 12])], outputs, inits)
    return make_model(graph)


def _batches(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 4, 12, 12)).astype(np.float32)} for _ in range(count)]


def test_rewrite_through_the_hardswish_is_exact_in_float():
    model = pointwise_hardswish_depthwise()
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    ranges = np.linspace(0.05, 4.0, C)
    how, record = equalize_depthwise(rewritten, ChannelTarget("dw", "h", 1), ranges)
    assert how == "hardswish" and record.kind == "depthwise"
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Add" not in ops and ops.count("Conv") == 5  # the Add became a depthwise 1x1 Conv(x', s, 3)
    shift = next(n for n in rewritten.graph.node if n.output[0] == "shifted")
    assert {a.name: helper.get_attribute_value(a) for a in shift.attribute}["group"] == C
    assert_equivalent(model, rewritten, _batches(1, 5)[0])


def test_a_second_reader_of_the_hardswish_output_keeps_it_as_it_is():
    model = pointwise_hardswish_depthwise(second_reader=True)
    assert hardswish_producer(GraphIndex.build(model.graph), "h", C) is None
    plain = pointwise_hardswish_depthwise()
    conv, add = hardswish_producer(GraphIndex.build(plain.graph), "h", C)
    assert (conv.name, add.name) == ("pw1", "hs_add")


def test_only_a_ruinous_input_step_is_equalized_on_ort_cpu():
    """The estimate is low with quiet channels behind large weights, high without them; ``fold_only`` (ort-cpu)
    rewrites only the first."""
    for quiet, rewritten in ((0.02, True), (1.0, False)):
        model = pointwise_hardswish_depthwise(quiet=quiet)
        h = np.concatenate([run(_with_output(model, "h"), b)[1] for b in _batches(2, 1)])
        ranges = np.abs(h).max(axis=(0, 2, 3)).astype(np.float64)
        weight = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "wd"))
        estimate = depthwise_input_sqnr_db(ranges, weight)
        assert (estimate < MAX_HARDSWISH_EQUALIZED_SQNR_DB) is rewritten, estimate
        note, records = equalize_model(model, {"h": ranges}, fold_only=True)
        assert any(r.kind == "depthwise" for r in records) is rewritten, note


def _with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return out


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)))


def test_ort_cpu_default_recovers_the_crushed_channels_and_stays_integer():
    """Measured margin on held-out batches: without the rewrite (``--no-equalize``) the quiet channels round to
    nothing; with it the model keeps them, and every Conv still runs as a QLinearConv with no float island."""
    model = pointwise_hardswish_depthwise()
    calib, held_out = _batches(8, 2), _batches(4, 3)
    on = quantize(model, calib=calib, config=QuantConfig(target="ort-cpu"))
    off = quantize(model, calib=calib, config=_no_equalize())
    ref = np.concatenate([run(model, b)[0] for b in held_out])
    with_rewrite = _sqnr(ref, np.concatenate([run(on.model, b)[0] for b in held_out]))
    without = _sqnr(ref, np.concatenate([run(off.model, b)[0] for b in held_out]))
    assert with_rewrite > without + 6.0, (with_rewrite, without)
    counts = op_counts(optimized_model(on.model))
    # pw1, the 1x1 shift Conv and dw (pw2 and the head form the float tail after the last integer op, rule 3.5)
    assert counts.get(MS + "QLinearConv") == 3 and counts.get(MS + "QLinearMul") == 1, counts
    assert counts.get("DequantizeLinear", 0) <= 1 and "Add" not in counts and "Mul" not in counts, counts


def _no_equalize() -> QuantConfig:
    from dataclasses import replace
    config = QuantConfig(target="ort-cpu")
    return replace(config, recovery=replace(config.recovery, equalize=False))
