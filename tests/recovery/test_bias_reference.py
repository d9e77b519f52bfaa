"""Bias correction's FP32 means from the calibration pass (onnxq.recovery.bias_reference): the same means as its own
float pass, the same corrected model, and its own pass again whenever the calibration pass did not see exactly its
layers and batches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxq.recovery.bias_correction as bias_correction
from onnxq.calib.base import CalibOptions
from onnxq.calib.collect import SideOutputs, collect_statistics
from onnxq.config import QuantConfig, RecoveryOptions
from onnxq.pipeline import quantize
from onnxq.plan import build_plan
from onnxq.recovery.bias_correction import ChannelMeans, correction_targets, first_batches
from onnxq.recovery.bias_reference import CalibratedReference, batch_digest
from onnxq.runtime import make_session
from tests.recovery.nets_recovery import image_batches
from tests.recovery.test_bias_correction import silu_chain

BC = QuantConfig(recovery=RecoveryOptions(bias_correction=True))


def notes(result) -> str:
    return " ".join(result.report.prepare_notes)


def test_a_session_runs_appended_nodes_on_the_models_tensors() -> None:
    model = silu_chain(depth=1)
    axes = onnx.numpy_helper.from_array(np.array([0, 2, 3], np.int64), "side_axes")
    appended = onnx.GraphProto(node=[helper.make_node("ReduceSum", ["c0", "side_axes"], ["side_sum"], keepdims=0)],
                               initializer=[axes], output=[helper.make_empty_tensor_value_info("side_sum")])
    batch = image_batches(1, size=16, seed=4)[0]
    before = model.SerializeToString()
    got = make_session(model, outputs=["c0"], appended=appended).run(None, batch)
    assert len(got) == 3  # the graph output, the exposed c0, the appended sum
    np.testing.assert_allclose(got[2], got[1].sum(axis=(0, 2, 3)), rtol=1e-5)
    assert model.SerializeToString() == before  # the model itself is unchanged


def test_side_outputs_are_kept_for_the_batches_taken_until_the_first_declined() -> None:
    model = silu_chain(depth=1)
    axes = onnx.numpy_helper.from_array(np.array([0, 2, 3], np.int64), "side_axes")
    appended = onnx.GraphProto(node=[helper.make_node("ReduceSum", ["c0", "side_axes"], ["side_sum"], keepdims=0)],
                               initializer=[axes], output=[helper.make_empty_tensor_value_info("side_sum")])
    asked = []
    side = SideOutputs(appended, lambda batch: asked.append(batch) or len(asked) <= 2)
    calibrators, count = collect_statistics(model, {"a0": CalibOptions()}, image_batches(5, size=16, seed=4),
                                            progress=None, side=side)
    assert count == 5 and set(calibrators) == {"a0"}  # the side output is not a calibrated tensor
    assert len(asked) == 3 and len(side.values) == 2  # asked until it declined the third batch


def test_the_calibration_pass_gives_the_own_pass_means_and_the_same_corrected_model() -> None:
    model = silu_chain(depth=2)
    calib = image_batches(6, size=16, seed=5)
    uncorrected = quantize(model, calib=calib, config=replace(BC, recovery=replace(BC.recovery,
                                                                                  bias_correction=False)))
    plan = build_plan(model, BC)
    reference = CalibratedReference(model, plan, batches=4, samples=8)
    collect_statistics(model, {}, calib, side=reference.side)  # no calibrated tensor: nothing runs
    assert reference.side.values == []
    collect_statistics(model, {"a0": CalibOptions()}, calib, side=reference.side)
    targets, _, _ = correction_targets(model, plan)
    kept = first_batches(calib, 4, 8)
    got = reference.stats(targets, kept)
    own = ChannelMeans(model, targets, kept).run()
    assert got is not None and set(got) == set(own)
    for name in own:
        np.testing.assert_allclose(got[name].mean, own[name].mean, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got[name].samples, own[name].samples, rtol=1e-5, atol=1e-7)
    # the pipeline takes them from the calibration pass and writes the model its own pass gives, bit for bit
    with_reference = quantize(model, calib=calib, config=BC)
    assert "(FP32 means from the calibration pass)" in notes(with_reference)
    own_pass = quantize(model, calib=calib, config=BC, collector=_plain_collector)
    assert "(FP32 means from the calibration pass)" not in notes(own_pass)
    assert with_reference.model.SerializeToString() == own_pass.model.SerializeToString()
    assert uncorrected.model.SerializeToString() != with_reference.model.SerializeToString()  # it did correct


def _plain_collector(prepared, plan, data, config, progress):
    """The in-process calibration as a collector: the pipeline then attaches no side outputs (as for Ray)."""
    from onnxq.pipeline import calibrate

    return calibrate(prepared, plan, data, config, progress)


class ChangingBatches:
    """A re-iterable whose batches differ from one iteration to the next (a user's generator with fresh noise)."""

    def __init__(self) -> None:
        self.round = 0

    def __iter__(self):
        self.round += 1
        return iter(image_batches(4, size=16, seed=10 + self.round))


def test_other_batches_the_second_time_get_the_own_pass() -> None:
    result = quantize(silu_chain(depth=2), calib=ChangingBatches(), config=BC)
    assert "bias correction: " in notes(result) and "from the calibration pass" not in notes(result)


def test_gptq_rounded_weights_get_the_own_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = bias_correction.ChannelMeans.run
    monkeypatch.setattr(bias_correction.ChannelMeans, "run", lambda self, *a: calls.append(1) or original(self, *a))
    calib = image_batches(4, size=16, seed=6)
    quantize(silu_chain(depth=2), calib=calib, config=BC)
    assert calls == []
    gptq = replace(BC, recovery=replace(BC.recovery, weight_rounding="gptq"))
    result = quantize(silu_chain(depth=2), calib=calib, config=gptq)
    assert calls == [1] and "from the calibration pass" not in notes(result)


def test_the_digest_sees_values_shapes_and_names() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert batch_digest({"x": x}) == batch_digest({"x": x.copy()})
    assert batch_digest({"x": x}) == batch_digest({"x": np.asfortranarray(x)})
    assert batch_digest({"x": x}) != batch_digest({"x": x.reshape(4, 3)})
    assert batch_digest({"x": x}) != batch_digest({"y": x})
    changed = x.copy()
    changed[2, 3] += 1
    assert batch_digest({"x": x}) != batch_digest({"x": changed})
