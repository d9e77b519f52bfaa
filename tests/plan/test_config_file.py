"""Per-node TOML configuration: precedence, validation, unmatched rules; and calibration in tensor groups."""

import numpy as np
import pytest

import onnxq
from onnxq.calib.base import CalibOptions
from onnxq.calib.collect import CollectSettings, collect_statistics
from onnxq.config import Overrides, QuantConfig
from onnxq.config_file import load_config_file, unmatched_rules
from onnxq.data import BatchSource
from onnxq.errors import OnnxqError
from onnxq.pipeline import prepare
from onnxq.plan import build_plan
from tests.conftest import small_cnn
from tests.helpers import run_cli

CONFIG = '''
target = "tensorrt"

[global]
method = "percentile"
percentile = 99.9

[op.Gemm]
skip = true

[regex."^conv"]
method = "entropy"

[node.conv2]
method = "mse"
'''


def test_config_precedence(tmp_path):
    (tmp_path / "q.toml").write_text(CONFIG)
    overrides, run = load_config_file(tmp_path / "q.toml")
    assert run == {"target": "tensorrt"}
    prepared, _ = prepare(small_cnn(), QuantConfig())
    plan = build_plan(prepared, QuantConfig(overrides=overrides))
    assert plan.tensors["x"].method == "entropy"  # regex over global
    assert plan.tensors["r1"].method == "mse"  # exact name over regex
    assert plan.tensors["x"].percentile == 99.9  # global
    assert "f" not in plan.tensors  # Gemm skipped by op type
    # command-line flags are laid over the file
    merged = overrides.merged(Overrides.from_flags(include_ops=["Gemm"]))
    assert "f" in build_plan(prepared, QuantConfig(overrides=merged)).tensors


@pytest.mark.parametrize("text,match", [
    ("[global]\nmethd = 'minmax'\n", "unknown key(s) methd"),
    ("[op.Conv]\nskip = 'yes'\n", "skip must be true or false"),
    ("[node.x]\npercentile = 0\n", "percentile must be in (0, 100]"),
    ("[global]\nmethod = 'magic'\n", "unknown calibration method 'magic'"),
    ("[regex.'conv((']\nskip = true\n", "invalid node-name regex"),
    ("colour = 'blue'\n", "unknown key(s) colour"),
    ("[global\n", "is not valid TOML"),
])
def test_bad_config_files(tmp_path, text, match):
    (tmp_path / "q.toml").write_text(text)
    with pytest.raises(OnnxqError, match=match.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")
                       .replace("[", r"\[")):
        load_config_file(tmp_path / "q.toml")


def test_unmatched_rules_are_reported(cnn_dir):
    (cnn_dir / "q.toml").write_text("[op.LSTM]\nskip = true\n[regex.'^backbone']\nskip = true\n"
                                    "[node.nope]\nskip = true\n")
    overrides, _ = load_config_file(cnn_dir / "q.toml")
    assert unmatched_rules(overrides, small_cnn()) == [
        "op type 'LSTM' is not in the model", "regex '^backbone' matches no node name",
        "node 'nope' is not in the model"]
    r = run_cli("quantize", cnn_dir / "model.onnx", "--calib", cnn_dir / "calib", "--config", cnn_dir / "q.toml")
    assert r.returncode == 0 and "warning: regex '^backbone' matches no node name" in r.stderr


def test_memory_budget_splits_calibration_into_groups_with_equal_results(cnn_dir):
    prepared, _ = prepare(small_cnn(), QuantConfig())
    plan = build_plan(prepared, QuantConfig())
    data = BatchSource(prepared, cnn_dir / "calib")
    tensors = {t.name: CalibOptions(method="percentile") for t in plan.calibrated_activations()}
    one, n1 = collect_statistics(prepared, tensors, data, CollectSettings(memory_budget_mb=4096))
    # x is 4x3x16x16 floats = 12 KB: a 0 MB budget forces one tensor per group
    many, n2 = collect_statistics(prepared, tensors, data, CollectSettings(memory_budget_mb=0))
    assert n1 == n2 == 6
    for name in one:
        assert one[name].compute_range(True) == many[name].compute_range(True)


def test_every_method_quantizes_end_to_end(cnn_dir):
    for method in ("minmax", "percentile", "entropy", "mse"):
        config = QuantConfig(calib=CalibOptions(method=method))
        result = onnxq.quantize(str(cnn_dir / "model.onnx"), calib=str(cnn_dir / "calib"), config=config,
                                val=str(cnn_dir / "val"))
        assert result.report.validation.outputs[0].sqnr_db > 20, method
        assert all(np.isfinite(p.scale).all() for p in result.scales.values())


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_merged_stats_files_give_exactly_the_scales_of_one_run(cnn_dir, tmp_path, method):
    """Shards calibrated apart, saved, loaded and merged == one run over all the data, for every method."""
    from onnxq.calib.stats import merge_stats, save_stats
    from onnxq.graph import fingerprint
    from onnxq.pipeline import calibrate, weight_arrays
    from onnxq.scales.compute import compute_scales

    config = QuantConfig(calib=CalibOptions(method=method))
    prepared, _ = prepare(small_cnn(), config)
    plan = build_plan(prepared, config)
    batches = list(BatchSource(prepared, cnn_dir / "calib"))
    whole, _ = calibrate(prepared, plan, batches, config)
    paths = []
    for k, shard in enumerate((batches[:1], batches[1:4], batches[4:])):
        calibrators, n = calibrate(prepared, plan, shard, config)
        paths.append(save_stats(tmp_path / f"s{k}.npz", calibrators, fingerprint(prepared), n))
    merged, n = merge_stats(paths, fingerprint(prepared))
    assert n == 6
    weights = weight_arrays(prepared, plan)
    a, b = compute_scales(plan, whole, weights), compute_scales(plan, merged, weights)
    assert a.keys() == b.keys() and all(a[k].equals(b[k]) for k in a)
