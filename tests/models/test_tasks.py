"""Synthetic tasks and metrics of the reference models (numpy only, no torch)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxq.errors import OnnxqError
from onnxq.models import registry
from onnxq.models.tasks import bev, depth, shapes


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_data_is_deterministic_by_seed(name):
    info = registry.get_model(name)
    a_in, a_lab = info.make_batch(registry.data_rng(name, "val", 0), 2)
    b_in, b_lab = info.make_batch(registry.data_rng(name, "val", 0), 2)
    c_in, _ = info.make_batch(registry.data_rng(name, "val", 1), 2)
    d_in, _ = info.make_batch(registry.data_rng(name, "calib", 0), 2)
    assert list(a_in) == list(info.inputs)
    for k in a_in:
        assert a_in[k].dtype == np.float32
        np.testing.assert_array_equal(a_in[k], b_in[k])
        assert not np.array_equal(a_in[k], c_in[k])
        assert not np.array_equal(a_in[k], d_in[k])
    for k in a_lab:
        np.testing.assert_array_equal(a_lab[k], b_lab[k])


def test_unknown_model_is_a_user_error():
    with pytest.raises(OnnxqError, match="unknown model 'nope'.*pointnext"):
        registry.get_model("nope")


def test_importing_models_does_not_import_torch():
    code = "import sys, onnxq.models, onnxq.models.evaluate, onnxq.commands.models; print('torch' in sys.modules)"
    repo = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


def test_accuracy_metric():
    m = shapes.Accuracy()
    logits = np.eye(8, dtype=np.float32)[[0, 1, 2, 3]]
    m.update({"logits": logits}, {"label": np.array([0, 1, 2, 3])})
    assert m.compute() == 1.0
    m.update({"logits": logits}, {"label": np.array([0, 1, 5, 5])})
    assert m.compute() == 6 / 8
    assert shapes.baseline()[0] == 1 / 8


def test_shapes_are_normalised():
    pts = shapes.make_batch(np.random.default_rng(0), 8)[0]["points"]
    assert pts.shape == (8, shapes.NUM_POINTS, 3)
    np.testing.assert_allclose(np.linalg.norm(pts, axis=-1).max(axis=1), 1.0, rtol=1e-5)


def _one_car_labels(x, y):
    boxes = np.zeros((1, bev.MAX_OBJECTS, 7), np.float32)
    classes = np.full((1, bev.MAX_OBJECTS), -1, np.int64)
    boxes[0, 0] = [x, y, 0.8, 4.0, 1.8, 1.6, 0.3]
    classes[0, 0] = 0
    return {"boxes": boxes, "classes": classes}


def test_detection_decode_recovers_centre():
    lab = _one_car_labels(3.3, -5.7)
    t = bev.targets(lab)
    det = bev.decode(t["heatmap"], t["regression"][:, :2])[0]
    assert det.shape == (1, 4)
    score, cls, x, y = det[0]
    assert (score, cls) == (1.0, 0)
    assert x == pytest.approx(3.3, abs=1e-5) and y == pytest.approx(-5.7, abs=1e-5)


def test_detection_ap_perfect_and_partial():
    rng = np.random.default_rng(0)
    _, lab = bev.make_batch_lidar(rng, 4)
    t = bev.targets(lab)
    m = bev.DetectionAP()
    m.update({"heatmap": t["heatmap"], "reg": t["regression"][:, :2]}, lab)
    assert m.compute() == pytest.approx(1.0)
    # two cars; one true positive (score 0.9) and one false positive (0.8, far away): recall stops at 0.5,
    # so 51 of the 101 recall points have precision 1
    boxes = np.zeros((1, bev.MAX_OBJECTS, 7), np.float32)
    classes = np.full((1, bev.MAX_OBJECTS), -1, np.int64)
    boxes[0, 0, :2], boxes[0, 1, :2], classes[0, :2] = [0.5, 0.5], [-10.5, -10.5], 0
    heat = np.zeros((1, 3, bev.OUT_GRID, bev.OUT_GRID), np.float32)
    reg = np.full((1, 2, bev.OUT_GRID, bev.OUT_GRID), 0.5, np.float32)
    heat[0, 0, 16, 16] = 0.9  # centre (0.5, 0.5): hit
    heat[0, 0, 25, 25] = 0.8  # centre (9.5, 9.5): miss
    m = bev.DetectionAP()
    m.update({"heatmap": heat, "reg": reg}, {"boxes": boxes, "classes": classes})
    assert m.per_class()["car"] == pytest.approx(51 / 101)
    assert np.isnan(m.per_class()["truck"])  # no ground truth: left out of the mean
    assert m.compute() == pytest.approx(51 / 101)


def test_random_detection_baseline_is_near_zero():
    _, lab = bev.make_batch_lidar(np.random.default_rng(0), 8)
    assert registry.baseline_metric("centerpoint", [lab]) < 0.05


def test_absrel_metric():
    gt = np.random.default_rng(0).uniform(1, 10, (2, 1, 4, 4)).astype(np.float32)
    m = depth.AbsRel()
    m.update({"depth": gt}, {"depth": gt})
    assert m.compute() == 0.0
    m = depth.AbsRel()
    m.update({"depth": 2 * gt}, {"depth": gt})
    assert m.compute() == pytest.approx(1.0)


def test_depth_scene_is_finite_and_in_range():
    inp, lab = depth.make_batch(np.random.default_rng(0), 4)
    assert inp["image"].shape == (4, 3, 64, 64) and lab["depth"].shape == (4, 1, 64, 64)
    assert np.isfinite(lab["depth"]).all()
    assert lab["depth"].min() > 1.0 and lab["depth"].max() < 21.0


def test_export_without_torch_is_a_user_error(monkeypatch, tmp_path, capsys):
    from onnxq.cli import main

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    assert main(["models", "export", "pointnext", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'onnxq[torch]'" in err[0]
    assert not (tmp_path / "out").exists()
