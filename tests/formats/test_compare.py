"""onnxq compare: one calibration pass shared by every format, metrics per format, JSON/Markdown/plots."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxq.compare.run as compare_run
from onnxq.cli import main
from onnxq.compare.run import CompareOptions, compare_formats
from onnxq.config import NodeSetting, Overrides, QuantConfig
from onnxq.pipeline import quantize
from tests.helpers import init, make_model


def image_model() -> onnx.ModelProto:
    """Conv (16 -> 16, 3x3) -> Relu -> Conv (16 -> 4, 1x1): a rank-4, image-like output for SSIM."""
    rng = np.random.default_rng(4)
    inits = [init("w1", (rng.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32)),
             init("w2", (rng.standard_normal((4, 16, 1, 1)) * 0.3).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def data(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((2, 16, 12, 12)).astype(np.float32)} for _ in range(n)]


FORMATS = ("int8", "fp8", "w8", "int4-g32")


def test_calibrates_once_and_matches_separate_quantization(monkeypatch):
    calls = []
    real = compare_run.calibrate
    monkeypatch.setattr(compare_run, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    calib, val = data(3, 0), data(2, 1)
    result = compare_formats(image_model(), calib, val, QuantConfig(), CompareOptions(FORMATS, latency_runs=1))
    assert len(calls) == 1  # one calibration for every format
    assert [f.label for f in result.formats] == list(FORMATS)
    by = {f.label: f for f in result.formats}
    # the same model as quantizing that format on its own (same statistics, same scales)
    alone = quantize(image_model(), calib=calib,
                     config=QuantConfig(overrides=Overrides(global_setting=NodeSetting(dtype="fp8")))).model
    q_alone = sorted(i.raw_data for i in alone.graph.initializer)
    q_compare = sorted(i.raw_data for i in by["fp8"].model.graph.initializer)
    assert q_alone == q_compare
    # weight-only: quantize rounds by GPTQ by default (weight_rounding "auto"), and compare shows that model too
    w8_alone = quantize(image_model(), calib=calib,
                        config=QuantConfig(overrides=Overrides(global_setting=NodeSetting(dtype="w8")))).model
    assert sorted(i.raw_data for i in w8_alone.graph.initializer) == \
        sorted(i.raw_data for i in by["w8"].model.graph.initializer)
    out = {f.label: f.outputs[0] for f in result.formats}
    assert all(o.ssim is not None and 0.5 < o.ssim <= 1.0 for o in out.values())
    assert out["w8"].sqnr_db > out["int8"].sqnr_db  # weight-only INT8 loses less than INT8 activations too
    assert by["int4-g32"].weight_ratio > 6 and by["w8"].weight_ratio > 3.5
    assert by["w8"].plan.activations() == [] and by["int8"].plan.activations()
    assert len(by["int8"].layers) >= 2 and result.val_batches == 2
    assert all(f.latency_ms is not None and f.latency_ms > 0 for f in result.formats)
    # one float model for all: the activation shift (symmetric int8 only) is left out unless every format gets it
    assert not any("_shifted" in i for f in result.formats for n in f.model.graph.node for i in n.input)
    int8_alone = compare_formats(image_model(), calib, val, QuantConfig(), CompareOptions(("int8",), latency_runs=1))
    assert any(i.endswith("_shifted") for n in int8_alone.formats[0].model.graph.node for i in n.input)


def test_cli_writes_json_markdown_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model_path = tmp_path / "m.onnx"
    onnx.save(image_model(), model_path)
    np.savez(tmp_path / "calib.npz", x=np.concatenate([b["x"] for b in data(2, 0)]))
    np.savez(tmp_path / "val.npz", x=np.concatenate([b["x"] for b in data(2, 1)]))
    out = tmp_path / "cmp"
    code = main(["compare", str(model_path), "--calib", str(tmp_path / "calib.npz"), "--val",
                 str(tmp_path / "val.npz"), "--formats", "int8,int4-g64", "--latency-runs", "1", "-o", str(out),
                 "--batch-size", "2"])
    assert code == 0
    doc = json.loads((out / "compare.json").read_text())
    assert [f["format"] for f in doc["formats"]] == ["int8", "int4-g64"]
    metrics = set(doc["formats"][0]["outputs"][0])
    assert {"sqnr_db", "psnr_db", "mae", "mse", "max_abs_error", "cosine", "ssim"} <= metrics
    md = (out / "compare.md").read_text()
    assert "| int4-g64 |" in md and md.strip() in capsys.readouterr().out
    for name in ("metrics.png", "per_layer_sqnr.png", "error_hist.png", "size_vs_error.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_unknown_format_is_a_user_error(tmp_path, capsys):
    model_path = tmp_path / "m.onnx"
    onnx.save(image_model(), model_path)
    code = main(["compare", str(model_path), "--calib", "random", "--val", "random", "--formats", "int8,int3",
                 "-o", str(tmp_path / "cmp")])
    assert code == 2 and "unknown format" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_without_matplotlib_writes_json_and_says_how_to_get_plots(tmp_path, capsys, monkeypatch):
    import onnxq.compare.plots as plots

    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    model_path = tmp_path / "m.onnx"
    onnx.save(image_model(), model_path)
    code = main(["compare", str(model_path), "--calib", "random", "--val", "random", "--formats", "w8",
                 "--latency-runs", "0", "--no-per-layer", "-o", str(tmp_path / "cmp")])
    assert code == 0
    assert "pip install 'onnxq[plots]'" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == ["compare.json", "compare.md"]
