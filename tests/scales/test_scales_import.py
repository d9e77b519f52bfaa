"""quantize --scales: the Q/DQ graph is built from the given scales, exactly; mismatches are reported."""

import json

import numpy as np
import onnx
import pytest

from tests.helpers import run_cli


def quantize(cnn_dir, *extra):
    r = run_cli("quantize", cnn_dir / "model.onnx", *extra)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.parametrize("fmt", ["json", "aimet"])
def test_export_then_import_rebuilds_the_identical_model(cnn_dir, fmt):
    # json carries the float rewrites (equalization of one Conv pair, bias correction) and replays them; AIMET
    # encodings cannot (see tests/scales/test_float_rewrites.py): exported from a run without them, they fit the
    # original model
    without = ["--no-equalize", "--no-bias-correction"] if fmt == "aimet" else []
    quantize(cnn_dir, "--calib", cnn_dir / "calib", "-o", cnn_dir / "a.onnx", *without)
    r = run_cli("export-scales", cnn_dir / "a.onnx", "--format", fmt, "-o", cnn_dir / f"s.{fmt}")
    assert r.returncode == 0, r.stderr
    r = quantize(cnn_dir, "--scales", cnn_dir / f"s.{fmt}", "-o", cnn_dir / "b.onnx")
    assert "ranges from imported scales" in r.stdout
    assert (cnn_dir / "a.onnx").read_bytes() == (cnn_dir / "b.onnx").read_bytes()


def test_trt_cache_gives_activation_scales_and_weights_come_from_values(cnn_dir):
    quantize(cnn_dir, "--calib", cnn_dir / "calib", "--no-equalize", "--no-bias-correction", "-o", cnn_dir / "a.onnx")
    run_cli("export-scales", cnn_dir / "a.onnx", "--format", "trt-cache", "-o", cnn_dir / "calib.cache")
    quantize(cnn_dir, "--scales", cnn_dir / "calib.cache", "-o", cnn_dir / "b.onnx")
    assert (cnn_dir / "a.onnx").read_bytes() == (cnn_dir / "b.onnx").read_bytes()


def test_hand_written_json_scales_are_used_exactly(cnn_dir):
    doc = {"format": "onnxq-scales", "version": 1, "tensors": {
        "x": {"dtype": "int8", "axis": None, "scale": 0.03125, "zero_point": 0},
        "r1": {"dtype": "int8", "axis": None, "scale": 0.0078125, "zero_point": 0},
        "f": {"dtype": "int8", "axis": None, "scale": 0.015625, "zero_point": 0},
        "w2": {"dtype": "int8", "axis": 0, "scale": [0.001 * (i + 1) for i in range(16)], "zero_point": [0] * 16},
    }}
    (cnn_dir / "s.json").write_text(json.dumps(doc))
    quantize(cnn_dir, "--scales", cnn_dir / "s.json", "-o", cnn_dir / "q.onnx")
    model = onnx.load(cnn_dir / "q.onnx")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert inits["x_scale"] == np.float32(0.03125) and inits["r1_scale"] == np.float32(0.0078125)
    np.testing.assert_array_equal(inits["w2_scale"], np.float32([0.001 * (i + 1) for i in range(16)]))


def test_channel_mismatch_and_strict_mode(cnn_dir):
    doc = {"format": "onnxq-scales", "version": 1, "tensors": {
        "x": {"dtype": "int8", "axis": None, "scale": 0.03, "zero_point": 0},
        "w2": {"dtype": "int8", "axis": 0, "scale": [0.01] * 3, "zero_point": [0] * 3},
    }}
    (cnn_dir / "bad.json").write_text(json.dumps(doc))
    r = run_cli("quantize", cnn_dir / "model.onnx", "--scales", cnn_dir / "bad.json", "-o", cnn_dir / "q.onnx")
    assert r.returncode == 2 and "channel-mismatch" in r.stderr and not (cnn_dir / "q.onnx").exists()
    doc["tensors"]["w2"] = {"dtype": "int8", "axis": 0, "scale": [0.01] * 16, "zero_point": [0] * 16}
    doc["tensors"]["not_in_model"] = {"dtype": "int8", "axis": None, "scale": 0.1, "zero_point": 0}
    (cnn_dir / "partial.json").write_text(json.dumps(doc))
    r = run_cli("quantize", cnn_dir / "model.onnx", "--scales", cnn_dir / "partial.json", "--strict",
                "-o", cnn_dir / "q.onnx")
    assert r.returncode == 2 and ("unknown-tensor" in r.stderr or "missing-tensor" in r.stderr)
    r = run_cli("quantize", cnn_dir / "model.onnx", "--scales", cnn_dir / "partial.json", "-o", cnn_dir / "q.onnx")
    assert r.returncode == 0, r.stderr
    assert "not_in_model" in r.stderr and "consumers stay float" in r.stderr


def test_scales_written_for_another_model_warn_and_fail_when_strict(cnn_dir):
    doc = {"format": "onnxq-scales", "version": 1, "model": {"fingerprint": "0123456789abcdef"}, "tensors": {
        "x": {"dtype": "int8", "axis": None, "scale": 0.03, "zero_point": 0}}}
    (cnn_dir / "other.json").write_text(json.dumps(doc))
    r = run_cli("quantize", cnn_dir / "model.onnx", "--scales", cnn_dir / "other.json", "-o", cnn_dir / "q.onnx")
    assert r.returncode == 0 and "was written for another model" in r.stderr
    r = run_cli("quantize", cnn_dir / "model.onnx", "--scales", cnn_dir / "other.json", "--strict",
                "-o", cnn_dir / "q2.onnx")
    assert r.returncode == 2 and "was written for another model" in r.stderr and not (cnn_dir / "q2.onnx").exists()
