"""`onnxq lint` and `onnxq build-engine` through the command line (in process)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.helpers import run_cli
from tests.trt.trt_golden import Graph, clean_model


@pytest.fixture()
def bad_model(tmp_path):
    g = Graph()
    x = g.qdq(g.input("x"), "in", scale=0.1, zp=5)
    w = g.init("w", np.zeros((4, 4, 1, 1), np.float32))
    g.output(g.node("Conv", [x, w], "conv"))
    path = tmp_path / "bad.onnx"
    onnx.save(g.model(), str(path))
    return path


def test_lint_clean_model_exits_0(tmp_path):
    path = tmp_path / "clean.onnx"
    onnx.save(clean_model(), str(path))
    result = run_cli("lint", path, "--target", "tensorrt")
    assert result.returncode == 0, result.stderr
    assert "no findings" in result.stdout


def test_lint_errors_exit_1_with_text_and_json(bad_model):
    result = run_cli("lint", bad_model)
    assert result.returncode == 1
    assert "error: [zero-point] in_Q:" in result.stdout
    assert "warning: [float-weighted-op] conv:" in result.stdout
    result = run_cli("lint", bad_model, "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["errors"] == 1 and [(f["rule"], f["subject"]) for f in doc["findings"]] == [
        ("zero-point", "in_Q"), ("float-weighted-op", "conv")]


def test_lint_missing_file_is_one_line_exit_2(tmp_path):
    result = run_cli("lint", tmp_path / "nope.onnx")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("onnxq: error:")


def dynamic_model_path(tmp_path):
    g = Graph()
    x = g.input("images", shape=("N", 4, "H", "W"))
    g.output(g.node("Relu", [conv_input(g, x)], "relu"))
    path = tmp_path / "dyn.onnx"
    onnx.save(g.model(), str(path))
    return path


def conv_input(g: Graph, x: str) -> str:
    return g.node("Conv", [g.qdq(x, "in"), g.weight("w", (4, 4, 1, 1))], "conv")


def test_build_engine_without_tensorrt_is_one_line_exit_2(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed")
    except ImportError:
        pass
    result = run_cli("build-engine", dynamic_model_path(tmp_path), "-o", tmp_path / "m.plan", "--shapes",
                   "images:1x4x64x64")
    assert result.returncode == 2
    assert result.stderr == ("onnxq: error: tensorrt is not installed; pip install 'onnxq[trt]' on a machine with "
                             "an NVIDIA GPU, or use --print-trtexec\n")
    assert not (tmp_path / "m.plan").exists()


def test_build_engine_print_trtexec(tmp_path):
    model = dynamic_model_path(tmp_path)
    result = run_cli("build-engine", model, "-o", tmp_path / "m.plan", "--fp16", "--shapes", "images:4x4x640x640",
                   "--min-shapes", "images:1x4x320x320", "--max-shapes", "images:8x4x1280x1280",
                   "--workspace", "1024", "--print-trtexec", "--trt-version", "10")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"trtexec --onnx={model} --saveEngine={tmp_path / 'm.plan'} --int8 --fp16 ")
    assert "--minShapes=images:1x4x320x320 --optShapes=images:4x4x640x640 --maxShapes=images:8x4x1280x1280" in line
    assert "--memPoolSize=workspace:1024" in line
    strong = run_cli("build-engine", model, "-o", tmp_path / "m.plan", "--shapes", "images:1x4x64x64",
                   "--print-trtexec", "--trt-version", "10")
    assert "--stronglyTyped" in strong.stdout and "--int8" not in strong.stdout


def test_build_engine_dynamic_input_without_shapes_is_a_clear_error(tmp_path):
    result = run_cli("build-engine", dynamic_model_path(tmp_path), "-o", tmp_path / "m.plan", "--print-trtexec")
    assert result.returncode == 2
    assert "dynamic input(s) need a shape" in result.stderr and "--shapes images:1x4x1x1" in result.stderr
