"""Scales of an equalized run stay consistent wherever they go: the JSON file (version 3) records the float rewrites
and ``quantize --scales`` replays them bit-exactly; a TensorRT cache / AIMET export comes with the float model it
belongs to or is refused; older files still import."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxq.scales.rewrites import METADATA_KEY, read_from_model
from tests.helpers import assert_equivalent, op_types, run_cli
from tests.recovery.nets_recovery import image_batches, mobilenet_hardswish


@pytest.fixture
def mobile_dir(tmp_path):
    """tmp_path with model.onnx (depthwise + HardSwish, Conv pairs) and calib/ (3 structured batches as .npy)."""
    onnx.save(mobilenet_hardswish(), tmp_path / "model.onnx")
    (tmp_path / "calib").mkdir()
    for i, batch in enumerate(image_batches(count=3, size=32, seed=10)):
        np.save(tmp_path / "calib" / f"{i:03d}.npy", batch["x"])
    return tmp_path


def cli(*args):
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    return r


def without_shapes(path) -> bytes:
    """The model's bytes without its shape annotations (value_info: inferred again when a float model is
    prepared, so the equalized float model's run also annotates the inserted Mul outputs)."""
    model = onnx.load(path)
    del model.graph.value_info[:]
    return model.SerializeToString()


def equalized_run(d, *extra):
    """Equalization's rewrites only (exact in float): bias correction and the activation shift, on by default for
    tensorrt, off."""
    cli("quantize", d / "model.onnx", "--calib", d / "calib", "--equalize", "--no-bias-correction",
        "--no-shift-activations", *extra,
        "-o", d / "a.onnx")
    return onnx.load(d / "a.onnx")


@pytest.mark.parametrize("extra", [(), ("--smoothquant", "0.5")])
def test_json_scales_record_the_rewrites_and_replay_to_a_bit_identical_model(mobile_dir, extra):
    d = mobile_dir
    quantized = equalized_run(d, *extra)
    record = read_from_model(quantized)
    kinds = {"depthwise", "smoothquant"} if extra else {"depthwise"}  # SmoothQuant: the Gemm classifier's input
    assert record is not None and {r.kind for r in record.rewrites} == kinds
    count = 3 + bool(extra)
    assert len(record.rewrites) == count and op_types(quantized).count("Mul") == count  # a Mul each (no fold)
    r = cli("export-scales", d / "a.onnx", "--format", "json", "-o", d / "s.json")
    assert "float rewrites" in r.stdout
    doc = json.loads((d / "s.json").read_text())
    assert doc["version"] == 3 and len(doc["float_rewrites"]["rewrites"]) == count
    for strict in ((), ("--strict",)):
        r = cli("quantize", d / "model.onnx", "--scales", d / "s.json", *strict, "-o", d / "b.onnx")
        assert "float rewrites replayed" in r.stdout
        assert (d / "a.onnx").read_bytes() == (d / "b.onnx").read_bytes()


def test_without_the_rewrites_the_same_scales_give_another_model(mobile_dir):
    """What the record prevents: the scales applied to the original graph (v2 file, rewrites stripped)."""
    d = mobile_dir
    equalized_run(d)
    cli("export-scales", d / "a.onnx", "--format", "json", "-o", d / "s.json")
    doc = json.loads((d / "s.json").read_text())
    del doc["float_rewrites"]
    doc["version"] = 2
    (d / "old.json").write_text(json.dumps(doc))
    r = run_cli("quantize", d / "model.onnx", "--scales", d / "old.json", "-o", d / "c.onnx")
    assert r.returncode == 0, r.stderr  # a version-2 file still imports
    assert "replayed" not in r.stdout and "[missing-tensor]" in r.stderr  # the Mul outputs are not in this graph
    assert (d / "a.onnx").read_bytes() != (d / "c.onnx").read_bytes()


def test_trt_cache_of_an_equalized_run_needs_the_float_model_and_writes_the_one_it_belongs_to(mobile_dir):
    d = mobile_dir
    equalized_run(d)
    r = run_cli("export-scales", d / "a.onnx", "--format", "trt-cache", "-o", d / "calib.cache")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--float-model" in r.stderr
    assert not (d / "calib.cache").exists() and not (d / "calib.equalized.onnx").exists()
    r = cli("export-scales", d / "a.onnx", "--format", "trt-cache", "--float-model", d / "model.onnx",
            "-o", d / "calib.cache")
    assert "trtexec --onnx=" in r.stdout and (d / "calib.equalized.onnx").exists()
    float_model = onnx.load(d / "calib.equalized.onnx")
    assert any(p.key == METADATA_KEY for p in float_model.metadata_props)
    for batch in image_batches(count=2, size=32, seed=30):
        assert_equivalent(onnx.load(d / "model.onnx"), float_model, batch, rtol=1e-5)  # exact in float
    # the cache and the model beside it rebuild the equalized run's Q/DQ model exactly (nothing replayed twice)
    r = cli("quantize", d / "calib.equalized.onnx", "--scales", d / "calib.cache", "--strict", "-o", d / "t.onnx")
    assert without_shapes(d / "a.onnx") == without_shapes(d / "t.onnx")
    # so does the JSON file on the equalized float model: its weights are already the rewritten ones
    cli("export-scales", d / "a.onnx", "--format", "json", "-o", d / "s.json")
    r = cli("quantize", d / "calib.equalized.onnx", "--scales", d / "s.json", "--strict", "-o", d / "u.onnx")
    assert "not replayed" in r.stdout
    assert without_shapes(d / "a.onnx") == without_shapes(d / "u.onnx")


def test_default_tensorrt_run_records_its_corrected_biases_and_every_export_rebuilds_it(mobile_dir):
    """Bias correction and the activation shift are on by default for tensorrt: the shifts and the corrected biases are
    float rewrites like equalization's, so the JSON scales replay them and a TensorRT cache comes with the float model
    that holds them."""
    d = mobile_dir
    r = cli("quantize", d / "model.onnx", "--calib", d / "calib", "-o", d / "a.onnx")
    assert "bias correction:" in r.stdout and "activation shift:" in r.stdout
    record = read_from_model(onnx.load(d / "a.onnx"))
    assert record is not None and {r.kind for r in record.rewrites} == {"depthwise", "shift", "bias-correction"}
    cli("export-scales", d / "a.onnx", "--format", "json", "-o", d / "s.json")
    r = cli("quantize", d / "model.onnx", "--scales", d / "s.json", "--strict", "-o", d / "b.onnx")
    assert "float rewrites replayed" in r.stdout and "bias correction" not in r.stdout  # nothing to correct on
    assert (d / "a.onnx").read_bytes() == (d / "b.onnx").read_bytes()
    r = run_cli("export-scales", d / "a.onnx", "--format", "trt-cache", "-o", d / "calib.cache")
    assert r.returncode == 2 and "--no-equalize --no-shift-activations --no-bias-correction" in r.stderr  # a plain run
    cli("export-scales", d / "a.onnx", "--format", "trt-cache", "--float-model", d / "model.onnx",
        "-o", d / "calib.cache")
    r = cli("quantize", d / "calib.equalized.onnx", "--scales", d / "calib.cache", "--strict", "-o", d / "t.onnx")
    assert without_shapes(d / "a.onnx") == without_shapes(d / "t.onnx")
    # the same run with --no-bias-correction differs in the biases alone: the correction is not a no-op here
    cli("quantize", d / "model.onnx", "--calib", d / "calib", "--no-bias-correction", "-o", d / "c.onnx")
    assert (d / "a.onnx").read_bytes() != (d / "c.onnx").read_bytes()


def test_float_model_of_another_model_is_refused(mobile_dir, tmp_path_factory):
    d = mobile_dir
    equalized_run(d)
    other = tmp_path_factory.mktemp("other") / "other.onnx"
    onnx.save(mobilenet_hardswish(seed=5), other)
    r = run_cli("export-scales", d / "a.onnx", "--format", "aimet", "--float-model", other, "-o", d / "s.encodings")
    assert r.returncode == 2 and "is not the float model" in r.stderr
    assert not (d / "s.encodings").exists() and not (d / "s.equalized.onnx").exists()


def test_unequalized_runs_keep_the_old_files(mobile_dir):
    d = mobile_dir
    cli("quantize", d / "model.onnx", "--calib", d / "calib", "--no-equalize", "--no-bias-correction",
        "--no-shift-activations", "-o", d / "a.onnx")
    assert read_from_model(onnx.load(d / "a.onnx")) is None
    cli("export-scales", d / "a.onnx", "--format", "json", "-o", d / "s.json")
    assert json.loads((d / "s.json").read_text())["version"] == 1
    cli("export-scales", d / "a.onnx", "--format", "trt-cache", "-o", d / "c.cache")
    assert not (d / "c.equalized.onnx").exists()


def test_a_newer_version_and_a_broken_record_are_refused(mobile_dir):
    d = mobile_dir
    equalized_run(d)
    cli("export-scales", d / "a.onnx", "--format", "json", "-o", d / "s.json")
    doc = json.loads((d / "s.json").read_text())
    doc["float_rewrites"]["rewrites"][0]["scale"][0] = -1.0
    (d / "bad.json").write_text(json.dumps(doc))
    r = run_cli("quantize", d / "model.onnx", "--scales", d / "bad.json", "-o", d / "b.onnx")
    assert r.returncode == 2 and "finite and positive" in r.stderr and not (d / "b.onnx").exists()
    doc["version"] = 4
    (d / "new.json").write_text(json.dumps(doc))
    r = run_cli("quantize", d / "model.onnx", "--scales", d / "new.json", "-o", d / "b.onnx")
    assert r.returncode == 2 and "newer onnxq" in r.stderr


def corrected_biases(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.name: inits[n.input[2]] for n in model.graph.node
            if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2] in inits}


def test_corrected_biases_travel_with_the_json_scales_and_the_trt_cache_float_model(mobile_dir):
    """Bias correction changes float biases after the ranges: the record carries their final values, so
    ``--scales`` rebuilds the corrected model bit for bit and the TensorRT cache's float model holds them."""
    d = mobile_dir
    quantized = equalized_run(d, "--bias-correction")
    record = read_from_model(quantized)
    corrected = [r for r in record.rewrites if r.kind == "bias-correction"]
    assert corrected and record.rewrites[-1].kind == "bias-correction"  # after the channel rewrites
    got = corrected_biases(quantized)
    for r in corrected:
        np.testing.assert_array_equal(r.bias, got[r.node].reshape(-1))
    cli("export-scales", d / "a.onnx", "--format", "json", "-o", d / "s.json")
    doc = json.loads((d / "s.json").read_text())
    assert sum(r["kind"] == "bias-correction" for r in doc["float_rewrites"]["rewrites"]) == len(corrected)
    r = cli("quantize", d / "model.onnx", "--scales", d / "s.json", "--strict", "-o", d / "b.onnx")
    assert "float rewrites replayed" in r.stdout
    assert (d / "a.onnx").read_bytes() == (d / "b.onnx").read_bytes()
    # a record stripped of its bias rewrites no longer reproduces the weights digest it names: refused
    doc["float_rewrites"]["rewrites"] = [r for r in doc["float_rewrites"]["rewrites"] if r["kind"] != "bias-correction"]
    (d / "nobias.json").write_text(json.dumps(doc))
    r = run_cli("quantize", d / "model.onnx", "--scales", d / "nobias.json", "-o", d / "c.onnx")
    assert r.returncode == 2 and "gave other weights" in r.stderr and not (d / "c.onnx").exists()
    # the TensorRT cache comes with the float model it belongs to: equalized AND corrected
    cli("export-scales", d / "a.onnx", "--format", "trt-cache", "--float-model", d / "model.onnx",
        "-o", d / "calib.cache")
    float_biases = corrected_biases(onnx.load(d / "calib.equalized.onnx"))
    for r in corrected:
        np.testing.assert_array_equal(float_biases[r.node].reshape(-1), r.bias)


def test_biases_corrected_after_gptq_are_not_recorded(mobile_dir):
    """GPTQ re-rounds the float weights; a replay on the original weights cannot reproduce them, so the record
    stops at the channel rewrites and the report says why."""
    d = mobile_dir
    cli("quantize", d / "model.onnx", "--calib", d / "calib", "--bias-correction", "--weight-rounding", "gptq",
        "-o", d / "a.onnx", "--report", d / "r.json")
    assert "corrected biases not recorded" in (d / "r.json").read_text()
    record = read_from_model(onnx.load(d / "a.onnx"))
    assert record is not None and all(r.kind != "bias-correction" for r in record.rewrites)


def test_a_bias_record_of_another_model_is_refused(mobile_dir):
    d = mobile_dir
    equalized_run(d, "--bias-correction")
    cli("export-scales", d / "a.onnx", "--format", "json", "-o", d / "s.json")
    doc = json.loads((d / "s.json").read_text())
    bias = next(r for r in doc["float_rewrites"]["rewrites"] if r["kind"] == "bias-correction")
    bias["node"] = "no_such_conv"
    (d / "bad.json").write_text(json.dumps(doc))
    r = run_cli("quantize", d / "model.onnx", "--scales", d / "bad.json", "-o", d / "b.onnx")
    assert r.returncode == 2 and "no_such_conv" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    bias["node"], bias["bias"] = "x", ["nan"]
    (d / "bad.json").write_text(json.dumps(doc))
    r = run_cli("quantize", d / "model.onnx", "--scales", d / "bad.json", "-o", d / "b.onnx")
    assert r.returncode == 2 and "finite numbers" in r.stderr and not (d / "b.onnx").exists()
