"""onnxq.runtime: one session builder for a ModelProto or a path, intermediate tensors exposed without a copy."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxq.errors import OnnxqError
from onnxq.runtime import SessionSettings, make_session, output_names, run_batch, run_named
from tests.conftest import small_cnn


def _x(seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((2, 3, 16, 16)).astype(np.float32)}


def test_path_and_model_give_the_same_outputs(tmp_path):
    model = small_cnn()
    onnx.save(model, tmp_path / "m.onnx")
    from_model = run_batch(make_session(model), _x(), "x")
    from_path = run_batch(make_session(tmp_path / "m.onnx"), _x(), "x")
    np.testing.assert_array_equal(from_model[0], from_path[0])


def test_exposed_outputs_follow_the_graph_outputs_and_leave_the_model_alone(tmp_path):
    model = small_cnn()
    before = model.SerializeToString()
    session = make_session(model, outputs=["r1", "logits", "r1", "p"])
    assert output_names(session) == ["logits", "r1", "p"]
    assert model.SerializeToString() == before
    got = run_named(session, _x(), "x")
    assert got["r1"].shape == (2, 8, 16, 16) and (got["r1"] >= 0).all()
    onnx.save(model, tmp_path / "m.onnx")
    by_path = run_named(make_session(tmp_path / "m.onnx", outputs=["p"]), _x(), "x")
    np.testing.assert_array_equal(by_path["p"], got["p"])


def test_errors_name_the_problem():
    with pytest.raises(OnnxqError, match="onnxruntime cannot load the model"):
        make_session(onnx.ModelProto())
    session = make_session(small_cnn())
    with pytest.raises(OnnxqError, match="onnxruntime failed on batch 3"):
        run_batch(session, {"x": np.zeros((1, 2, 16, 16), np.float32)}, "batch 3")
    with pytest.raises(OnnxqError, match="optimization level"):
        SessionSettings(optimization="fast").to_ort()
