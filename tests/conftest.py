"""Shared fixtures: a small CNN built in code (no torch) with calibration data on disk."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.helpers import init, make_model, write_batches


def small_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv-BN-Relu -> Conv -> GlobalAveragePool -> Flatten -> Gemm, input (N, 3, 16, 16)."""
    rng = np.random.default_rng(seed)
    inits = [
        init("w1", (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)),
        init("bn_g", rng.uniform(0.5, 1.5, 8).astype(np.float32)),
        init("bn_b", rng.standard_normal(8).astype(np.float32) * 0.1),
        init("bn_m", rng.standard_normal(8).astype(np.float32) * 0.1),
        init("bn_v", rng.uniform(0.5, 2, 8).astype(np.float32)),
        init("w2", (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32)),
        init("b2", rng.standard_normal(16).astype(np.float32) * 0.1),
        init("fc_w", (rng.standard_normal((10, 16)) * 0.3).astype(np.float32)),
        init("fc_b", np.zeros(10, np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_g", "bn_b", "bn_m", "bn_v"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "small_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return make_model(graph)


@pytest.fixture
def cnn_dir(tmp_path):
    """tmp_path with model.onnx, calib/ (6 .npy batches) and val/ (2 .npz batches)."""
    onnx.save(small_cnn(), tmp_path / "model.onnx")
    rng = np.random.default_rng(1)
    write_batches(tmp_path / "calib", 6, (4, 3, 16, 16), rng)
    write_batches(tmp_path / "val", 2, (2, 3, 16, 16), rng, npz_key="x")
    return tmp_path


@pytest.fixture(autouse=True)
def _no_progress_lines(monkeypatch):
    """Progress shows only for stages that run longer than this: on a loaded machine a slow stage must not add
    lines to the stderr that tests compare (tests of the progress display pass their own delay)."""
    monkeypatch.setenv("ONNXQ_PROGRESS_DELAY", "1e9")
