"""Sensitivity analysis ranks a deliberately fragile node first; the command writes its table, JSON and plot."""

import json

import numpy as np
import onnx
import pytest

from onnxq import QuantConfig
from onnxq.recovery.sensitivity import SensitivityOptions, analyze, calibrate_model, split_samples
from tests.helpers import run_cli
from tests.recovery.nets import FRAGILE_CONFIG, NODES, batches, fragile_chain


def test_fragile_node_ranked_first():
    calibrated = calibrate_model(fragile_chain(), batches(4, seed=1), FRAGILE_CONFIG)
    report, _ = analyze(calibrated, batches(2, seed=2))
    ranked = report.ranked()
    assert [n.node for n in ranked][0] == "conv_frag"
    by_name = {n.node: n for n in report.nodes}
    assert set(by_name) == set(NODES)
    frag = by_name["conv_frag"]
    others = [n for n in report.nodes if n.node != "conv_frag"]
    # alone it costs at least 10 dB more than any other node, and leaving it float buys the most
    assert frag.sqnr_only_quantized + 10 < min(n.sqnr_only_quantized for n in others)
    assert frag.gain_db == max(n.gain_db for n in report.nodes) and frag.gain_db > 10
    assert frag.sqnr_only_float > report.all_quantized_sqnr
    assert report.all_quantized_sqnr < min(n.sqnr_only_quantized for n in others)
    assert 0 < frag.macs and report.total_macs == sum(n.macs for n in report.nodes)


def test_sensitivity_command(tmp_path):
    onnx.save(fragile_chain(), tmp_path / "model.onnx")
    for split, seed in (("calib", 1), ("val", 2)):
        (tmp_path / split).mkdir()
        for i, b in enumerate(batches(2, seed=seed)):
            np.savez(tmp_path / split / f"{i}.npz", **b)
    r = run_cli("sensitivity", tmp_path / "model.onnx", "--calib", tmp_path / "calib", "--val", tmp_path / "val",
                "--no-equalize", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert rows[0][1] == "conv_frag"
    payload = json.loads((tmp_path / "out" / "sensitivity.json").read_text())
    assert payload["nodes"][0]["node"] == "conv_frag" and len(payload["nodes"]) == 4
    assert (tmp_path / "out" / "sensitivity.png").exists() or "pip install 'onnxq[plots]'" in r.stderr


def test_sensitivity_needs_existing_data(tmp_path):
    onnx.save(fragile_chain(), tmp_path / "model.onnx")
    r = run_cli("sensitivity", tmp_path / "model.onnx", "--calib", tmp_path / "nope", "--val", tmp_path / "nope")
    assert r.returncode == 2 and r.stderr.startswith("onnxq: error:")


def test_screened_figures_are_the_exhaustive_ones_where_measured_on_all_samples():
    """Screening every node on the first sample, then the most harmful on all: the refined rows equal the exhaustive
    analysis exactly (sums over the screening sample plus the others), the rest are the exhaustive analysis of the
    first sample alone; with as many screening samples as there are, the result is the exhaustive one."""
    calibrated = calibrate_model(fragile_chain(), batches(4, seed=1), FRAGILE_CONFIG)
    val = batches(2, seed=2, size=3)
    exhaustive, _ = analyze(calibrated, val, options=SensitivityOptions(exhaustive=True))
    screened, _ = analyze(calibrated, val, options=SensitivityOptions(screen_samples=1, refine_top=1))
    first_only, _ = analyze(calibrated, [{"x": val[0]["x"][:1]}], options=SensitivityOptions(exhaustive=True))
    assert screened.screen_samples == 1 and screened.samples == exhaustive.samples == 6
    by = {r.node: r for r in exhaustive.nodes}
    first = {r.node: r for r in first_only.nodes}
    refined = [r for r in screened.nodes if r.samples == 6]
    assert {r.node for r in refined} >= {"conv_frag"} and len(refined) < len(NODES)
    for row in screened.nodes:
        expected = by[row.node] if row.samples == 6 else first[row.node]
        assert row.sqnr_only_quantized == pytest.approx(expected.sqnr_only_quantized, rel=1e-9)
        assert row.sqnr_only_float == pytest.approx(expected.sqnr_only_float, rel=1e-9)
        # the gain compares with the fully quantized model on the same samples as the row
        assert row.gain_db == pytest.approx(expected.gain_db, rel=1e-9, abs=1e-9)
    assert screened.all_quantized_sqnr == pytest.approx(exhaustive.all_quantized_sqnr, rel=1e-9)
    assert screened.agreement is not None and screened.agreement.nodes == len(refined)
    assert screened.ranked()[0].node == "conv_frag"
    all_screened, _ = analyze(calibrated, val, options=SensitivityOptions(screen_samples=6))
    assert [r.as_dict() for r in all_screened.nodes] == [r.as_dict() for r in exhaustive.nodes]


def test_split_samples_cuts_a_batch_only_on_a_dynamic_batch_axis():
    model = fragile_chain()
    val = batches(2, seed=2, size=3)
    first, rest = split_samples(model, val, 4)
    assert [b["x"].shape[0] for b in first] == [3, 1] and [b["x"].shape[0] for b in rest] == [2]
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3
    first, rest = split_samples(model, val, 1)
    assert [b["x"].shape[0] for b in first] == [3] and [b["x"].shape[0] for b in rest] == [3]


def test_equalization_repairs_the_fragile_node():
    """What the default equalization does to this very chain: the Conv pair conv_b -> Relu -> conv_frag is
    rescaled (Nagel et al. 2019), so conv_frag is no longer the outlier it was."""
    calibrated = calibrate_model(fragile_chain(), batches(4, seed=1), QuantConfig())
    report, _ = analyze(calibrated, batches(2, seed=2))
    plain, _ = analyze(calibrate_model(fragile_chain(), batches(4, seed=1), FRAGILE_CONFIG), batches(2, seed=2))
    assert report.all_quantized_sqnr > plain.all_quantized_sqnr + 10


def test_ort_cpu_plan_with_absorbed_activations():
    """On ort-cpu a Clip absorbed into its producer's node unit is a quantized node with no input of its own to
    gate (PP-PicoDet's HardSwish rewrites made ``onnxq sensitivity --target ort-cpu`` fail with a KeyError): the
    ranked nodes are those that read a planned tensor, each measured."""
    from tests.recovery.test_equalize_hardswish import _batches, pointwise_hardswish_depthwise

    config = QuantConfig(target="ort-cpu")
    calibrated = calibrate_model(pointwise_hardswish_depthwise(), _batches(4, 1), config)
    absorbed = [d.node for d in calibrated.plan.nodes if d.quantized and "fused into" in d.reason]
    assert absorbed == ["hs_clip"]
    report, _ = analyze(calibrated, _batches(2, 2), options=SensitivityOptions(exhaustive=True))
    assert "hs_clip" not in {n.node for n in report.nodes}
    assert {"pw1", "dw"} <= {n.node for n in report.nodes}
    assert all(np.isfinite(n.sqnr_only_quantized) for n in report.nodes)
