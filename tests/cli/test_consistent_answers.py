"""One answer per question: `onnxq lint` and the report's lint agree, a quantized ConvTranspose passes lint, --stats
honours or refuses the calibration flags, a TensorRT cache holds activations only and --strict asks it for those, and
quantize -> export-scales -> quantize --scales gives the same model bytes in every format."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.helpers import init, make_model, run_cli, write_batches


def deconv_net() -> onnx.ModelProto:
    """Conv -> Relu -> ConvTranspose -> Relu -> Conv with ONE output channel (a heatmap head), input (N, 3, 8, 8)."""
    rng = np.random.default_rng(0)
    inits = [init("w1", (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)),
             init("wt", (rng.standard_normal((8, 4, 2, 2)) * 0.3).astype(np.float32)),
             init("wh", (rng.standard_normal((1, 4, 1, 1)) * 0.3).astype(np.float32)),
             init("bh", np.array([0.1], np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("ConvTranspose", ["r1", "wt"], ["d"], name="up", strides=[2, 2]),
             helper.make_node("Relu", ["d"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "wh", "bh"], ["heat"], name="head")]
    graph = helper.make_graph(nodes, "deconv_net",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("heat", TensorProto.FLOAT, ["N", 1, 16, 16])], inits)
    return make_model(graph)


@pytest.fixture
def net(tmp_path):
    onnx.save(deconv_net(), tmp_path / "model.onnx")
    write_batches(tmp_path / "calib", 4, (2, 3, 8, 8), np.random.default_rng(1))
    return tmp_path


def test_lint_and_report_lint_give_one_result(net):
    """The report runs the lint of `onnxq lint` with its settings: the same findings, with and without ConvTranspose
    (the float ConvTranspose of the default plan draws no finding in either)."""
    for extra in ([], ["--include-op", "ConvTranspose"]):
        out, report = net / f"m{len(extra)}.onnx", net / f"r{len(extra)}.json"
        assert run_cli("quantize", net / "model.onnx", "--calib", net / "calib", "-o", out, "--report", report,
                       *extra).returncode == 0
        linted = run_cli("lint", out, "--json")
        assert linted.returncode == 0  # the README's --include-op ConvTranspose output passes lint
        assert json.loads(linted.stdout)["findings"] == json.loads(report.read_text())["lint"]
        rules = [f["rule"] for f in json.loads(report.read_text())["lint"]]
        assert rules == (["int8-convtranspose"] if extra else [])


def test_stats_honour_the_method_flags_or_refuse_them(net):
    model, calib = net / "model.onnx", net / "calib"
    assert run_cli("calibrate", model, "--calib", calib, "--method", "entropy", "-o", net / "h.npz").returncode == 0
    assert run_cli("calibrate", model, "--calib", calib, "--method", "minmax", "-o", net / "mm.npz").returncode == 0
    # histogram statistics give any histogram method: the same bytes as calibrating with it directly (without bias
    # correction, which needs the data itself: a --stats run has none to correct on; nor the activation shift, a float
    # rewrite the shards' statistics do not see)
    for method in (["--method", "percentile", "--percentile", "99.9"], ["--method", "mse"], ["--method", "minmax"], []):
        direct = ["--method", "entropy"] if not method else method
        assert run_cli("quantize", model, "--calib", calib, *direct, "--no-bias-correction", "--no-shift-activations",
                       "-o", net / "a.onnx").returncode == 0
        assert run_cli("quantize", model, "--stats", net / "h.npz", *method, "-o", net / "b.onnx").returncode == 0
        assert (net / "a.onnx").read_bytes() == (net / "b.onnx").read_bytes(), method
        (net / "a.onnx").unlink()
        (net / "b.onnx").unlink()
    refused = run_cli("quantize", model, "--stats", net / "mm.npz", "--method", "entropy", "-o", net / "c.onnx")
    assert refused.returncode == 2 and "minmax statistics" in refused.stderr and not (net / "c.onnx").exists()
    refused = run_cli("quantize", model, "--stats", net / "h.npz", "--method", "entropy", "--num-bins", "256",
                      "-o", net / "c.onnx")
    assert refused.returncode == 2 and "--num-bins 2048" in refused.stderr
    refused = run_cli("quantize", model, "--stats", net / "h.npz", "--percentile", "99", "-o", net / "c.onnx")
    assert refused.returncode == 2 and "--method" in refused.stderr
    refused = run_cli("quantize", model, "--stats", net / "h.npz", "--calib-batches", "2", "-o", net / "c.onnx")
    assert refused.returncode == 2 and "--calib-batches" in refused.stderr


@pytest.mark.parametrize("fmt", ["json", "trt-cache", "aimet"])
def test_scales_round_trip_is_byte_identical(net, fmt):
    """The one-channel head weight stays per channel through every format (the cache holds no weights at all). A
    shifted or bias-corrected run's trt-cache and AIMET file need its rewritten float model
    (tests/scales/test_float_rewrites.py), so those run without the shift and the correction (the Conv before the
    float ConvTranspose is corrected: a corrected layer follows); JSON records both."""
    model, first = net / "model.onnx", net / "m.onnx"
    unshifted = [] if fmt == "json" else ["--no-shift-activations", "--no-bias-correction"]
    assert run_cli("quantize", model, "--calib", net / "calib", *unshifted, "-o", first).returncode == 0
    scales = net / f"s.{fmt}"
    assert run_cli("export-scales", first, "--format", fmt, "-o", scales).returncode == 0
    again = run_cli("quantize", model, "--scales", scales, "--strict", "-o", net / "r.onnx")
    assert again.returncode == 0, again.stderr
    assert (net / "r.onnx").read_bytes() == first.read_bytes()
    if fmt == "trt-cache":
        names = [line.split(":")[0] for line in scales.read_text().splitlines()[1:]]
        assert names and not any(n in ("w1", "wt", "wh") for n in names)  # activations only


def test_strict_cache_still_asks_for_every_activation(net):
    model, first = net / "model.onnx", net / "m.onnx"
    assert run_cli("quantize", model, "--calib", net / "calib", "--no-shift-activations", "--no-bias-correction",
                   "-o", first).returncode == 0
    cache = net / "s.cache"
    assert run_cli("export-scales", first, "--format", "trt-cache", "-o", cache).returncode == 0
    cache.write_text("\n".join(cache.read_text().splitlines()[:-1]) + "\n")  # drop one activation
    result = run_cli("quantize", model, "--scales", cache, "--strict", "-o", net / "r.onnx")
    assert result.returncode == 2 and "missing-tensor" in result.stderr
