"""Automatic mixed precision reaches a target with the fewest float nodes, and fails cleanly when it cannot."""

import numpy as np
import onnx
import pytest

from onnxq import quantize
from onnxq.errors import OnnxqError
from onnxq.recovery.mixed_precision import AccuracyTarget
from onnxq.trt.lint import has_errors, lint_model
from onnxq.validate.compare import compare_models
from tests.helpers import run_cli
from tests.recovery.nets import FRAGILE_CONFIG, batches, fragile_chain


@pytest.fixture(scope="module")
def data():
    return fragile_chain(), batches(4, seed=1), batches(2, seed=2)


def test_target_sqnr_reached_by_leaving_the_fragile_node_float(data):
    model, calib, val = data
    plain = compare_models(model, quantize(model, calib=calib, config=FRAGILE_CONFIG).model, val).min_sqnr_db
    assert plain < 25  # the target below is out of reach without mixed precision
    result = quantize(model, calib=calib, config=FRAGILE_CONFIG, val=val,
                      target=AccuracyTarget(sqnr_db=25, max_float_share=0.7))
    mixed = result.report.mixed_precision
    assert mixed.ok and [n.node for n in mixed.float_nodes] == ["conv_frag"]
    assert 0.5 < mixed.float_mac_share <= 0.7 and mixed.float_nodes[0].gain > 0
    verified = compare_models(model, result.model, val).min_sqnr_db  # the final model, really run
    assert verified >= 25 and verified == pytest.approx(mixed.verified_score)
    quantized_convs = {n.name for n in result.model.graph.node if n.op_type == "Conv"
                       and any("dequantized" in i for i in n.input)}
    assert quantized_convs == {"conv_a", "conv_b", "conv_c"}
    assert any("mixed precision: target" in line for line in result.report.summary_lines())
    findings = lint_model(result.model)  # the float node is FP16 work for TensorRT: a warning, never an error
    assert not has_errors(findings) and {f.subject for f in findings} == {"conv_frag"}


def test_target_already_met_keeps_everything_quantized(data):
    model, calib, val = data
    result = quantize(model, calib=calib, config=FRAGILE_CONFIG, val=val, target=-10.0)
    assert result.report.mixed_precision.ok and result.report.mixed_precision.float_nodes == []


def test_user_metric_with_tolerable_loss(data):
    model, calib, val = data
    from onnxq.runtime import make_session

    fp32 = make_session(model)
    reference = [fp32.run(None, b)[0] for b in val]

    def metric(session) -> float:  # negative mean abs error against FP32: higher is better, 0 at FP32
        name = session.get_inputs()[0].name
        return -float(np.mean([np.abs(session.run(None, {name: b["x"]})[0] - r).mean()
                               for b, r in zip(val, reference)]))

    lenient = quantize(model, calib=calib, config=FRAGILE_CONFIG, val=val, target=metric,
                       tolerable_loss=1.0).report.mixed_precision
    assert lenient.goal == "metric" and lenient.ok and lenient.float_nodes == []
    result = quantize(model, calib=calib, config=FRAGILE_CONFIG, val=val,
                      target=AccuracyTarget(metric=metric, tolerable_loss=0.05, max_float_share=0.7))
    mixed = result.report.mixed_precision
    assert mixed.goal == "metric" and mixed.ok and mixed.all_quantized_score < -0.05
    assert [n.node for n in mixed.float_nodes] == ["conv_frag"]
    assert metric(make_session(result.model)) >= -0.05 and mixed.verified_score >= -0.05


def test_target_needs_val(data):
    model, calib, _ = data
    with pytest.raises(OnnxqError, match="validation data"):
        quantize(model, calib=calib, config=FRAGILE_CONFIG, target=30.0)


def test_cli_unreachable_target_exits_1_with_summary(tmp_path, data):
    model, calib, val = data
    onnx.save(model, tmp_path / "model.onnx")
    for split, bs in (("calib", calib), ("val", val)):
        (tmp_path / split).mkdir()
        for i, b in enumerate(bs):
            np.savez(tmp_path / split / f"{i}.npz", **b)
    args = ("quantize", tmp_path / "model.onnx", "--calib", tmp_path / "calib", "--val", tmp_path / "val",
            "--no-equalize")
    r = run_cli(*args, "--target-sqnr", "25", "--max-float-share", "0.01")
    assert r.returncode == 1, r.stderr
    assert "NOT reached" in r.stderr and "raise --max-float-share" in r.stderr
    r = run_cli(*args, "--target-sqnr", "25", "--max-float-share", "0.7")
    assert r.returncode == 0, r.stderr
    assert "float: conv_frag" in r.stdout
    r = run_cli("quantize", tmp_path / "model.onnx", "--calib", tmp_path / "calib", "--target-sqnr", "25")
    assert r.returncode == 2 and "--target-sqnr needs --val" in r.stderr
