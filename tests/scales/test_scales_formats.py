"""Round trips and malformed input for the scale file formats (onnxq JSON, TensorRT cache, AIMET 0.6.1)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxq.errors import OnnxqError
from onnxq.scales import aimet, json_format, trt_cache
from onnxq.scales.io import check_scales, detect_format, load_scales, save_scales
from onnxq.scales.types import QuantParams, symmetric_params


def table():
    return {
        "input": symmetric_params(2.54),
        "relu:0": symmetric_params(0.001234),
        "conv.weight": symmetric_params(np.array([0.5, 1.0, 0.25], np.float64), axis=0),
        "asym": QuantParams(np.float32(0.02), np.uint8(17), "uint8", None),
    }


def assert_same(a, b, names=None):
    names = names or list(a)
    assert sorted(b) == sorted(names)
    for n in names:
        assert a[n].equals(b[n]), n


@pytest.mark.parametrize("fmt", ["json", "aimet"])
def test_lossless_round_trip(tmp_path, fmt):
    path = tmp_path / f"s.{fmt}"
    save_scales(table(), path, fmt)
    assert_same(table(), load_scales(path))  # format detected from the content
    assert_same(table(), load_scales(path, fmt))


def test_trt_cache_round_trip_keeps_per_tensor_symmetric(tmp_path, caplog):
    path = tmp_path / "calib.cache"
    save_scales(table(), path, "trt-cache")
    text = path.read_text()
    assert text.splitlines()[0] == "TRT-8601-EntropyCalibration2"
    assert "per-channel" in caplog.text and "asymmetric" in caplog.text
    back = load_scales(path)
    assert_same(table(), back, ["input", "relu:0"])


def test_trt_cache_encoding_matches_tensorrt():
    # onnxruntime's TensorRT EP example: "data_0: 4000889d" is the float32 bit pattern of the scale
    assert trt_cache.hex_to_float("4000889d") == pytest.approx(2.008338, rel=1e-6)
    assert trt_cache.float_to_hex(1.0) == "3f800000"
    p = trt_cache.loads("TRT-7103-EntropyCalibration2\ndata_0: 4000889d\n")["data_0"]
    assert p.dtype == "int8" and p.zero_point == 0 and float(p.amax()) == pytest.approx(2.008338 * 127, rel=1e-5)
    assert trt_cache.header("TRT-100300-MinMaxCalibration\n") == ("100300", "MinMaxCalibration")


def test_json_schema_text():
    doc = json.loads(json_format.dumps({"x": symmetric_params(1.27)}, fingerprint="abc", param_names=["w"]))
    assert doc == {"format": "onnxq-scales", "version": 1, "model": {"fingerprint": "abc"},
                   "tensors": {"x": {"dtype": "int8", "axis": None, "scale": pytest.approx(0.01), "zero_point": 0,
                                     "role": "activation"}}}


def test_aimet_encoding_fields():
    doc = json.loads(aimet.dumps(table(), param_names=["conv.weight"]))
    assert doc["version"] == "0.6.1"
    assert set(doc["param_encodings"]) == {"conv.weight"} and len(doc["param_encodings"]["conv.weight"]) == 3
    enc = doc["activation_encodings"]["input"][0]
    assert enc["bitwidth"] == 8 and enc["dtype"] == "int" and enc["is_symmetric"] == "True" and enc["offset"] == -128
    assert enc["min"] == pytest.approx(-128 * enc["scale"]) and enc["max"] == pytest.approx(127 * enc["scale"])
    assert doc["activation_encodings"]["asym"][0]["offset"] == -17


def test_aimet_reads_spec_example_and_channel_axes():
    spec = {"version": "0.4.0", "activation_encodings": {"20": [
        {"bitwidth": 8, "is_symmetric": "False", "max": 2.6086959838867188, "min": -2.109158515930176,
         "offset": -114.0, "scale": 0.018501389771699905}]},
        "param_encodings": {"w": [{"bitwidth": 8, "is_symmetric": "True", "offset": -128, "scale": 0.1, "min": 0,
                                   "max": 0}, {"bitwidth": 8, "is_symmetric": "True", "offset": -128, "scale": 0.2,
                                               "min": 0, "max": 0}]}}
    got = aimet.loads(json.dumps(spec), channel_axes={"w": 1})
    assert got["20"].dtype == "uint8" and int(got["20"].zero_point) == 114
    assert got["w"].axis == 1 and got["w"].symmetric and got["w"].channels == 2


@pytest.mark.parametrize("text, match", [
    ("TRT-8601-EntropyCalibration2\nx: zzzz\n", "hex"),
    ("TRT-8601-EntropyCalibration2\nx: bf800000\n", "finite and positive"),
    ("TRT-8601-EntropyCalibration2\nno colon here\n", "expected"),
    ("hello\nx: 3f800000\n", "cannot tell the format"),
    ('{"format": "onnxq-scales", "version": 1, "tensors": {"x": {"dtype": "int8", "axis": null, "scale": 0}}}',
     "tensor 'x'.*finite and positive"),
    ('{"format": "onnxq-scales", "version": 1, "tensors": {"x": {"dtype": "int4", "axis": null, "scale": 1}}}',
     "dtype"),
    ('{"format": "onnxq-scales", "version": 1, "tensors": {"x": {"axis": 0, "scale": 1.0}}}', "must be a list"),
    ('{"format": "onnxq-scales", "version": 4, "tensors": {}}', "newer onnxq"),
    ('{"format": "onnxq-scales", "version": 1}', "tensors"),
    ('{"format": "onnxq-scales", ', "does not parse"),
    ('{"something": 1}', "neither"),
    ('{"activation_encodings": {"x": [{"bitwidth": 16, "offset": 0, "scale": 1}]}}', "bitwidth"),
    ('{"activation_encodings": {"x": [{"bitwidth": 8, "offset": 0, "scale": -1}]}}', "tensor 'x'.*positive"),
    ('{"version": "1.0.0", "activation_encodings": []}', "not supported"),
    ('{"activation_encodings": {"x": [{"bitwidth": 8, "dtype": "float"}]}}', "dtype"),
])
def test_malformed_files_are_user_errors(tmp_path, text, match):
    path = tmp_path / "bad"
    path.write_text(text)
    with pytest.raises(OnnxqError, match=match):
        load_scales(path)


def test_missing_empty_and_binary_files(tmp_path):
    with pytest.raises(OnnxqError, match="not found"):
        load_scales(tmp_path / "nope.json")
    (tmp_path / "empty").write_text("")
    with pytest.raises(OnnxqError, match="empty"):
        load_scales(tmp_path / "empty")
    (tmp_path / "bin").write_bytes(b"\x00\xff\xfe\x01")
    with pytest.raises(OnnxqError, match="not a text scales file"):
        load_scales(tmp_path / "bin")
    with pytest.raises(OnnxqError, match="unknown scales format"):
        save_scales({}, tmp_path / "x", "onnx")


def test_atomic_save_leaves_no_temp_files(tmp_path):
    path = tmp_path / "s.json"
    save_scales(table(), path, "json")
    save_scales(table(), path, "json")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]
    with pytest.raises(OnnxqError, match="folder does not exist"):
        save_scales(table(), tmp_path / "missing" / "s.json", "json")


def test_detect_format():
    assert detect_format("TRT-8601-MinMaxCalibration\n") == "trt-cache"
    assert detect_format('{"format": "onnxq-scales"}') == "json"
    assert detect_format('{"param_encodings": {}}') == "aimet"


def test_deterministic_output():
    assert json_format.dumps(table()) == json_format.dumps(table())
    assert trt_cache.dumps(table()) == trt_cache.dumps(table())


def test_check_scales_findings():
    t = table()
    expected = {"input": None, "conv.weight": 4, "relu:0": 3, "planned_only": None, "asym": None}
    got = [(f.severity, f.rule, f.subject) for f in check_scales(t, expected, strict=False)]
    assert got == [("warning", "per-tensor-for-channels", "relu:0"),
                   ("error", "channel-mismatch", "conv.weight"),
                   ("warning", "missing-tensor", "planned_only")]
    strict = [(f.severity, f.rule, f.subject) for f in check_scales({"extra": symmetric_params(1.0)}, {}, strict=True)]
    assert strict == [("error", "unknown-tensor", "extra")]
    per_tensor_plan = check_scales({"w": symmetric_params(np.ones(2), axis=0)}, {"w": None})
    assert [f.rule for f in per_tensor_plan] == ["channel-mismatch"]
