"""`onnxq export-scales` through the command line: each format, read back."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxq.scales.io import load_scales
from onnxq.scales.qdq_reader import read_qdq_scales
from tests.helpers import run_cli

MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) <
  float s_x = {0.05}, int8 z_x = {0},
  float[4] s_w = {0.01, 0.02, 0.03, 0.04}, int8[4] z_w = {0, 0, 0, 0}
> {
  xq = QuantizeLinear(x, s_x, z_x)
  xd = DequantizeLinear(xq, s_x, z_x)
  wq = QuantizeLinear <axis = 0> (w, s_w, z_w)
  wd = DequantizeLinear <axis = 0> (wq, s_w, z_w)
  y = Conv <pads = [1, 1, 1, 1]> (xd, wd)
}
"""


@pytest.fixture()
def model_path(tmp_path):
    m = onnx.parser.parse_model(MODEL)
    m.graph.initializer.append(numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w"))
    path = tmp_path / "m.int8.onnx"
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("fmt, n", [("json", 2), ("aimet", 2), ("trt-cache", 1)])
def test_export_scales(tmp_path, model_path, fmt, n):
    out = tmp_path / f"scales.{fmt}"
    result = run_cli("export-scales", model_path, "--format", fmt, "-o", out)
    assert result.returncode == 0, result.stderr
    assert f"wrote {n} tensor scale(s)" in result.stdout
    table = load_scales(out)
    original = read_qdq_scales(onnx.load(str(model_path)))
    assert len(table) == n
    for name, params in table.items():
        assert params.equals(original[name])


def test_export_scales_trt_cache_header_and_warning(tmp_path, model_path):
    out = tmp_path / "calib.cache"
    result = run_cli("export-scales", model_path, "--format", "trt-cache", "-o", out, "--trt-version", "100300",
                   "--algorithm", "MinMaxCalibration")
    assert result.returncode == 0
    # activations only: the weight is left out (TensorRT computes weight scales itself), with no warning
    assert out.read_text().splitlines() == ["TRT-100300-MinMaxCalibration", "x: 3d4ccccd"]
    assert "warning" not in result.stderr


def test_export_scales_json_has_roles_and_no_fingerprint(tmp_path, model_path):
    out = tmp_path / "s.json"
    assert run_cli("export-scales", model_path, "--format", "json", "-o", out).returncode == 0
    import json

    doc = json.loads(out.read_text())
    # a Q/DQ model cannot name the float model its scales are for, so no fingerprint is recorded
    assert "model" not in doc and doc["tensors"]["w"]["role"] == "weight"
    assert doc["tensors"]["x"]["role"] == "activation"


def test_export_scales_bad_output_folder_is_exit_2(tmp_path, model_path):
    result = run_cli("export-scales", model_path, "--format", "json", "-o", tmp_path / "no" / "s.json")
    assert result.returncode == 2 and "output folder does not exist" in result.stderr
