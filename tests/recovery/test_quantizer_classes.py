"""Quantizer classes and ablation models (onnxq/recovery/quantizer_classes.py) on a small CNN+transformer graph."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxq.config import QuantConfig, RecoveryOptions
from onnxq.insert.qdq import InsertQDQ
from onnxq.pipeline import prepare, ranges
from onnxq.plan import build_plan
from onnxq.recovery.quantizer_classes import ablation_model, classify, restrict, scale_groups
from onnxq.validate.metrics import sqnr_db
from tests.helpers import init, make_model, run

CONFIG = QuantConfig(recovery=RecoveryOptions(equalize=False))


def cnn_transformer(seed: int = 0) -> onnx.ModelProto:
    """Stem Conv -> HardSwish -> squeeze-excitation -> depthwise Conv -> HardSwish -> pointwise Conv -> tokens ->
    one attention head (Q/K/V projections, Q K^T, Softmax, P V, output projection); input (N, 3, 8, 8)."""
    rng = np.random.default_rng(seed)

    def w(*shape: int, std: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    inits = [init("w_stem", w(8, 3, 3, 3)), init("w_se1", w(4, 8, 1, 1)), init("w_se2", w(8, 4, 1, 1)),
             init("w_dw", w(8, 1, 3, 3)), init("w_pw", w(16, 8, 1, 1)), init("tok_shape", np.array([0, 16, 64])),
             init("w_q", w(16, 16)), init("w_k", w(16, 16)), init("w_v", w(16, 16)), init("w_o", w(16, 16))]
    pads = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["x", "w_stem"], ["stem"], name="stem", pads=pads),
        helper.make_node("HardSwish", ["stem"], ["h1"], name="hs1"),
        helper.make_node("GlobalAveragePool", ["h1"], ["pooled"], name="gap"),
        helper.make_node("Conv", ["pooled", "w_se1"], ["se1"], name="se_reduce"),
        helper.make_node("Relu", ["se1"], ["se1r"], name="se_relu"),
        helper.make_node("Conv", ["se1r", "w_se2"], ["se2"], name="se_expand"),
        helper.make_node("HardSigmoid", ["se2"], ["gate"], name="se_gate"),
        helper.make_node("Mul", ["h1", "gate"], ["h2"], name="se_mul"),
        helper.make_node("Conv", ["h2", "w_dw"], ["dw"], name="dw", pads=pads, group=8),
        helper.make_node("HardSwish", ["dw"], ["h3"], name="hs3"),
        helper.make_node("Conv", ["h3", "w_pw"], ["pw"], name="pw"),
        helper.make_node("Reshape", ["pw", "tok_shape"], ["chw"], name="flatten"),
        helper.make_node("Transpose", ["chw"], ["tokens"], name="to_tokens", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["tokens", "w_q"], ["q"], name="proj_q"),
        helper.make_node("MatMul", ["tokens", "w_k"], ["k"], name="proj_k"),
        helper.make_node("MatMul", ["tokens", "w_v"], ["v"], name="proj_v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Softmax", ["scores"], ["attn"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["attn", "v"], ["mixed"], name="pv"),
        helper.make_node("MatMul", ["mixed", "w_o"], ["y"], name="proj_o"),
    ]
    graph = helper.make_graph(nodes, "cnn_transformer",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64, 16])], inits)
    return make_model(graph)


def _batches(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((4, 3, 8, 8)).astype(np.float32)} for _ in range(count)]


@pytest.fixture(scope="module")
def quantized():
    prepared, _ = prepare(cnn_transformer(), CONFIG)
    plan = build_plan(prepared, CONFIG)
    found = ranges(prepared, plan, CONFIG, calib=_batches(3, 1), stats=None, scales=None, progress=None)
    return prepared, plan, found.table


def test_classes_follow_the_op_patterns(quantized):
    prepared, plan, _ = quantized
    classes = classify(prepared, plan)
    assert classes["act: model input"] == {"x"}
    assert classes["act: squeeze-excitation Conv input"] == {"pooled", "se1r"}
    assert classes["act: depthwise Conv input"] == {"h2"}
    assert classes["act: dense Conv input"] == {"h3"}  # h1 is read by GlobalAveragePool and Mul only: float
    assert {"tokens", "q", "kt", "attn", "v", "mixed"} <= classes["act: MatMul/Gemm input"]
    assert classes["weight: depthwise Conv"] == {"w_dw"}
    assert classes["weight: dense Conv"] == {"w_stem", "w_se1", "w_se2", "w_pw"}
    assert classes["weight: MatMul/Gemm"] == {"w_q", "w_k", "w_v", "w_o"}
    # every planned tensor is in exactly one class
    listed = [t for members in classes.values() for t in members]
    assert sorted(listed) == sorted(plan.tensors)


def test_scale_groups_gather_shared_scales(quantized):
    _, plan, _ = quantized
    groups = scale_groups(plan)
    assert sorted(t for members in groups.values() for t in members) == sorted(t.name for t in plan.activations())
    for root, members in groups.items():
        assert plan.tensors[root].shares_scale_with is None and root in members


def test_ablation_model_of_the_whole_plan_is_the_quantized_model(quantized):
    prepared, plan, table = quantized
    full = InsertQDQ(plan, table).run(prepared, keep_input=True).model
    feeds = _batches(1, 7)[0]
    np.testing.assert_array_equal(run(ablation_model(prepared, plan, table, set(plan.tensors)), feeds)[0],
                                  run(full, feeds)[0])
    np.testing.assert_array_equal(run(ablation_model(prepared, plan, table, set()), feeds)[0],
                                  run(prepared, feeds)[0])


def test_ablation_model_quantizes_exactly_the_kept_tensors(quantized):
    prepared, plan, table = quantized
    classes = classify(prepared, plan)
    keep = classes["act: MatMul/Gemm input"] | classes["weight: depthwise Conv"]
    model = ablation_model(prepared, plan, table, keep)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == len(classes["act: MatMul/Gemm input"])
    assert ops.count("DequantizeLinear") == len(keep)
    assert {i.name for i in model.graph.initializer} >= {"w_dw_quantized"}
    assert "w_dw" not in {i.name for i in model.graph.initializer}
    with pytest.raises(KeyError):
        restrict(plan, {"not_a_tensor"})


def test_ablation_finds_a_broken_range_by_class(quantized):
    """A range made 64x too narrow in one class: that class alone costs the most, and leaving it out recovers the
    most; every other class alone stays far better."""
    prepared, plan, table = quantized
    broken = dict(table)
    broken["h2"] = replace(table["h2"], scale=table["h2"].scale / 64)
    feeds = _batches(2, 9)
    reference = np.concatenate([run(prepared, f)[0] for f in feeds])

    def sqnr(keep: set[str]) -> float:
        model = ablation_model(prepared, plan, broken, keep)
        return sqnr_db(reference, np.concatenate([run(model, f)[0] for f in feeds]))

    classes = classify(prepared, plan)
    everything = set(plan.tensors)
    alone = {kind: sqnr(members) for kind, members in classes.items()}
    left_out = {kind: sqnr(everything - members) for kind, members in classes.items()}
    assert min(alone, key=alone.__getitem__) == "act: depthwise Conv input"
    assert max(left_out, key=left_out.__getitem__) == "act: depthwise Conv input"
    assert left_out["act: depthwise Conv input"] > sqnr(everything) + 10
