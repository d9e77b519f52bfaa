"""Engine-build plumbing that needs no TensorRT: shapes, profiles, precision modes, trtexec lines, layer reports."""

from __future__ import annotations

import json

import onnx
import pytest

from onnxq.errors import OnnxqError
from onnxq.trt import build
from onnxq.trt.build import BuildOptions, precision_mode, summarize_layers
from onnxq.trt.shapes import build_profile, input_dims, parse_shapes
from onnxq.trt.trtexec import format_command, trtexec_command


def dynamic_model() -> onnx.ModelProto:
    return onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3, H, W] images, float[1, 10] fixed) => (float[N, 3, H, W] y) {
      y = Relu(images)
    }""")


def test_parse_shapes():
    assert parse_shapes("x:1x3x640x640") == {"x": (1, 3, 640, 640)}
    assert parse_shapes(["a:1x2,b:3", "name:with:colon:4x5"]) == {"a": (1, 2), "b": (3,), "name:with:colon": (4, 5)}
    assert parse_shapes("'my input':2") == {"my input": (2,)}
    assert parse_shapes(None) == {}
    for bad in ("x", "x:1xax3", ":1x2", "x:-1x3", "x:1,x:2"):
        with pytest.raises(OnnxqError):
            parse_shapes(bad)


def test_model_inputs_mark_dynamic_dims():
    assert input_dims(dynamic_model()) == {"images": (None, 3, None, None), "fixed": (1, 10)}


def test_profile_from_shapes():
    p = build_profile(dynamic_model(), parse_shapes("images:4x3x640x640"), parse_shapes("images:1x3x320x320"),
                      parse_shapes("images:8x3x1280x1280"))
    assert p.min == {"images": (1, 3, 320, 320)} and p.opt == {"images": (4, 3, 640, 640)}
    assert p.max == {"images": (8, 3, 1280, 1280)}
    only_opt = build_profile(dynamic_model(), parse_shapes("images:1x3x64x64"))
    assert only_opt.min == only_opt.opt == only_opt.max


@pytest.mark.parametrize("shapes, mins, maxs, match", [
    (None, None, None, "dynamic input.*images \\(\\?x3x\\?x\\?\\).*--shapes images:1x3x1x1"),
    ("images:1x4x8x8", None, None, "dimension 1 is fixed at 3"),
    ("images:1x3x8", None, None, "rank 4"),
    ("other:1", None, None, "not an input"),
    ("images:2x3x8x8", "images:4x3x8x8", None, "min <= opt <= max"),
    ("images:1x3x8x8,fixed:1x10", None, "fixed:2x10", "fixed at 1"),
    (None, "images:1x3x8x8", None, "no --shapes"),
])
def test_profile_errors(shapes, mins, maxs, match):
    with pytest.raises(OnnxqError, match=match):
        build_profile(dynamic_model(), parse_shapes(shapes), parse_shapes(mins), parse_shapes(maxs))


def test_precision_mode_per_version():
    assert precision_mode(8, fp16=False) == "weakly-typed"
    assert precision_mode(8, fp16=True) == "weakly-typed"
    assert precision_mode(10, fp16=False) == "strongly-typed"
    assert precision_mode(10, fp16=True) == "weakly-typed"
    assert precision_mode(11, fp16=False) == "strongly-typed"
    with pytest.raises(OnnxqError, match="TensorRT 11 removed the FP16"):
        precision_mode(11, fp16=True)
    with pytest.raises(OnnxqError, match="--float-rest fp16"):
        precision_mode(11, fp16=True, graph_has_fp16=False)
    # on TensorRT 11, --fp16 means "this graph's FP16 layers": a strongly typed build of an FP16 graph
    assert precision_mode(11, fp16=True, graph_has_fp16=True) == "strongly-typed"
    with pytest.raises(OnnxqError, match="8.0 or newer"):
        precision_mode(7, fp16=False)


def test_trtexec_command():
    p = build_profile(dynamic_model(), parse_shapes("images:4x3x640x640"), parse_shapes("images:1x3x640x640"),
                      parse_shapes("images:8x3x640x640"))
    cmd = trtexec_command("m.int8.onnx", "m.plan", mode="weakly-typed", fp16=True, profile=p, workspace_mib=2048)
    assert cmd == ["trtexec", "--onnx=m.int8.onnx", "--saveEngine=m.plan", "--int8", "--fp16",
                   "--minShapes=images:1x3x640x640", "--optShapes=images:4x3x640x640",
                   "--maxShapes=images:8x3x640x640", "--memPoolSize=workspace:2048", "--skipInference",
                   "--profilingVerbosity=detailed"]
    strong = trtexec_command("a b.onnx", "m.plan", mode="strongly-typed", trt_major=8)
    assert "--stronglyTyped" in strong and "--int8" not in strong and "--skipInference" not in strong
    assert format_command(strong).startswith("trtexec '--onnx=a b.onnx'")


def test_layer_precision_report_from_inspector_json():
    info = json.dumps({"Layers": [
        {"Name": "conv1 + relu1", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "x", "Format/Datatype": "Row major linear INT8 format"}]},
        {"Name": "head", "LayerType": "CaskGemm", "Inputs": [{"Name": "h", "Format/Datatype": "Channel major FP16"}]},
        {"Name": "out", "LayerType": "Reformat", "Inputs": [{"Format/Datatype": "Row major linear FP32"}]},
        "plain-name-only",
    ]})
    layers = summarize_layers(info)
    assert [(layer.name, layer.precision) for layer in layers] == [
        ("conv1 + relu1", "int8"), ("head", "fp16"), ("out", "fp32"), ("plain-name-only", "unknown")]
    report = build.BuildReport(engine_path="m.plan", trt_version="10.3.0", mode="strongly-typed", layers=layers)
    assert "fp16 1, fp32 1, int8 1, unknown 1" in report.summary()
    assert summarize_layers("not json") == []


def test_build_without_tensorrt_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    p = build_profile(dynamic_model(), parse_shapes("images:1x3x8x8"))
    with pytest.raises(OnnxqError, match=r"^tensorrt is not installed; pip install 'onnxq\[trt\]'"):
        build.build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", p, BuildOptions())
    assert build.installed_trt_major() is None


def test_build_with_tensorrt(tmp_path):
    pytest.importorskip("tensorrt")
    from trt_golden import clean_model

    path = tmp_path / "m.onnx"
    onnx.save(clean_model(), str(path))
    report = build.build_engine(path, tmp_path / "m.plan", build_profile(clean_model()), BuildOptions())
    assert (tmp_path / "m.plan").stat().st_size > 0
    assert any(layer.precision == "int8" for layer in report.layers)
