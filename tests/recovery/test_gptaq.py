"""Activation-aware weight rounding (``--weight-rounding gptaq``) equals its definition: on a very fine grid it is the
dampened least-squares fit of the FP32 output from the quantized input, with no upstream error it is GPTQ, its bias
column removes each layer's mean output error in the whole Q/DQ model exactly (as bias correction), depthwise
channels are separate problems, and on a depthwise + HardSwish network it beats nearest rounding on held-out data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxq.config import QuantConfig, RecoveryOptions
from onnxq.errors import OnnxqError
from onnxq.pipeline import quantize
from onnxq.recovery.gptaq import (
    DAMPENING,
    FULL_FIT_ROWS,
    BiasSlot,
    CrossMoments,
    RoundedLayer,
    asymmetric_solution,
    dampening_diagonal,
    round_asymmetric,
)
from onnxq.recovery.gptq import HessianSum, linear_view, round_layer
from onnxq.scales.types import QuantParams
from onnxq.validate.metrics import ErrorAccumulator
from tests.helpers import init, make_model, run
from tests.recovery.nets_recovery import image_batches, mobilenet_hardswish
from tests.recovery.test_bias_correction import channel_means, silu_chain

GPTAQ = QuantConfig(recovery=RecoveryOptions(weight_rounding="gptaq"))
# GPTAQ never runs with the activation shift (tensorrt's default): nearest rounding compared on the same graph
NEAREST = QuantConfig(recovery=RecoveryOptions(weight_rounding="nearest", bias_correction=False,
                                               activation_shift=False))


def _params(w: np.ndarray, axis: int, step: float | None = None) -> QuantParams:
    """Symmetric int8 per channel; ``step`` forces one (tiny) scale for every channel."""
    scale = np.abs(w).max(axis=tuple(a for a in range(w.ndim) if a != axis)) / 127
    if step is not None:
        scale = np.full_like(scale, step)
    return QuantParams(scale.astype(np.float32), np.zeros(scale.shape, np.int8), "int8", axis)


def _moments(node: onnx.NodeProto, w: np.ndarray, x_fp: np.ndarray, x_q: np.ndarray, with_bias: bool):
    view = linear_view(node, w.shape)
    assert view is not None
    acc = CrossMoments(view, with_bias, rows_per_batch=1 << 30)
    acc.add(x_fp, x_q, (0,))
    return view, acc


def _gemm_problem(seed: int = 0, k: int = 12, n: int = 5, rows: int = 400):
    rng = np.random.default_rng(seed)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    w = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    x_fp = (rng.standard_normal((rows, k)) @ rng.standard_normal((k, k)) + 1.0).astype(np.float32)
    x_q = (x_fp + 0.3 * rng.standard_normal((rows, k)) + 0.2).astype(np.float32)  # upstream error, biased
    return node, w, b, x_fp, x_q


def _definition(w: np.ndarray, b: np.ndarray, x_fp: np.ndarray, x_q: np.ndarray) -> np.ndarray:
    """``argmin ||[X_q 1] A'^T - [X_fp 1] A^T||^2 + (A' - A) D (A' - A)^T`` by ``lstsq`` on the stacked system (not
    by the module's normal equations); ``D`` is 1 % of the mean diagonal of ``X_q^T X_q``, 0 for the bias."""
    rows = len(x_q)
    aug_q, aug_fp = (np.hstack([x, np.ones((rows, 1))]).astype(np.float64) for x in (x_q, x_fp))
    a = np.hstack([w, b[:, None]]).astype(np.float64)
    centred = x_q.astype(np.float64) - x_q.astype(np.float64).mean(axis=0)
    damp = np.append(np.full(w.shape[1], DAMPENING * np.mean(np.sum(centred ** 2, 0))), 0.0)
    lhs = np.vstack([aug_q, np.diag(np.sqrt(damp))])
    rhs = np.vstack([aug_fp @ a.T, np.sqrt(damp)[:, None] * a.T])
    return np.linalg.lstsq(lhs, rhs, rcond=None)[0].T


def test_the_float_target_is_the_dampened_least_squares_fit() -> None:
    node, w, b, x_fp, x_q = _gemm_problem()
    _, acc = _moments(node, w, x_fp, x_q, with_bias=True)
    assert acc.hessian is not None and acc.cross is not None and acc.shift is not None
    np.testing.assert_allclose(dampening_diagonal(acc.hessian, with_bias=True)[0, -1], 0.0)
    centred = np.hstack([w, (b + w @ acc.shift[0])[:, None]])  # the moments are of the centred patches
    target, _ = asymmetric_solution(centred[None], acc.hessian, acc.cross, with_bias=True)
    got = np.hstack([target[0, :, :-1], (target[0, :, -1] - target[0, :, :-1] @ acc.shift[0])[:, None]])
    want = _definition(w, b, x_fp, x_q)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # float32 moments
    assert np.abs(want[:, :-1] - w).max() > 0.05  # the fit moved the weights: the upstream error is compensated


def test_with_too_few_rows_the_weights_round_to_nearest_and_the_bias_matches_the_mean() -> None:
    """40 rows for 13 columns (fewer than FULL_FIT_ROWS per column): nearest rounding, and the bias that makes the
    mean output over the rows equal FP32's (bias correction of the layer)."""
    node, w, b, x_fp, x_q = _gemm_problem(rows=40)
    view, acc = _moments(node, w, x_fp, x_q, with_bias=True)
    assert not acc.full_fit(w.shape[1] + 1) and acc.rows == 40 < FULL_FIT_ROWS * 13
    params = _params(w, 0)
    new_w, new_b = round_asymmetric(RoundedLayer(view, 1, BiasSlot("layer", 2, "b", b.shape)), w, b, acc, params)
    assert new_b is not None
    scale = params.scale[:, None]
    np.testing.assert_allclose(new_w, np.clip(np.rint(w / scale), -127, 127) * scale, rtol=1e-6)
    mean_error = (x_fp @ w.T + b).mean(axis=0) - (x_q @ new_w.T + new_b).mean(axis=0)
    np.testing.assert_allclose(mean_error, 0.0, atol=1e-4 * np.abs(x_fp @ w.T).max())


def test_on_a_fine_grid_the_rounding_reproduces_the_fit() -> None:
    """Grid step 1e-3 of the largest weight (int8 saturates at 127 steps, so the weights are scaled into range): the
    rounded weights are within a step of the float fit, the float bias absorbs the rest."""
    node, w, b, x_fp, x_q = _gemm_problem(seed=3)
    w = (w * 0.05).astype(np.float32)  # |w| <= ~0.2: the fit stays inside +-127 steps of 2e-3 (0.254)
    view, acc = _moments(node, w, x_fp, x_q, with_bias=True)
    step = 2e-3
    layer = RoundedLayer(view, 1, BiasSlot("layer", 2, "b", b.shape))
    new_w, new_b = round_asymmetric(layer, w, b, acc, _params(w, 0, step=step))
    assert new_b is not None
    want = _definition(w, b, x_fp, x_q)
    assert np.abs(want[:, :-1]).max() < 127 * step
    np.testing.assert_allclose(new_w, want[:, :-1], atol=1.01 * step)
    out_err = np.abs(x_q @ new_w.T + new_b - (x_q @ want[:, :-1].T + want[:, -1])).max()
    assert out_err < 0.05 * np.abs(x_fp @ w.T + b).max(), out_err
    np.testing.assert_array_equal(np.rint(new_w / step) * step, new_w)  # on the grid


def test_without_upstream_error_it_is_gptq() -> None:
    """MatMul (no bias column), ``x_q == x_fp``: the float target is the float weight and the rounding is GPTQ's."""
    rng = np.random.default_rng(1)
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    w = rng.standard_normal((32, 10)).astype(np.float32)  # [in, out]: per-channel axis 1
    x = (rng.standard_normal((6, 40, 32)) @ rng.standard_normal((32, 32))).astype(np.float32)
    view, acc = _moments(node, w, x, x, with_bias=False)
    params = _params(w, 1)
    got, bias = round_asymmetric(RoundedLayer(view, 1), w, None, acc, params)
    gptq = HessianSum(view, rows_per_batch=1 << 30)
    gptq.add(x, np.random.default_rng(0))
    want = round_layer(view, w, gptq.mean(), params)
    assert bias is None
    steps = np.rint((got - want) / params.scale[None, :])
    assert np.mean(steps == 0) > 0.99, np.mean(steps == 0)  # float64 vs float32 factor: a tie may flip


def test_depthwise_channels_are_separate_problems() -> None:
    """A change in one channel's input changes only that channel's weights and bias (one ``k*k + 1`` problem each)."""
    rng = np.random.default_rng(2)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=4, pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    x_fp = rng.standard_normal((2, 4, 10, 10)).astype(np.float32)
    x_q = (x_fp + 0.1 * rng.standard_normal(x_fp.shape)).astype(np.float32)
    params = _params(w, 0)
    results = []
    for shift in (0.0, 0.5):
        moved = x_q.copy()
        moved[:, 2] += shift
        view, acc = _moments(node, w, x_fp, moved, with_bias=True)
        layer = RoundedLayer(view, 1, BiasSlot("layer", 2, "b", b.shape))
        results.append(round_asymmetric(layer, w, b, acc, params))
    (w0, b0), (w1, b1) = results
    assert b0 is not None and b1 is not None
    others = [0, 1, 3]
    np.testing.assert_array_equal(w0[others], w1[others])
    np.testing.assert_allclose(b0[others], b1[others], rtol=1e-6)
    assert abs(float(b0[2] - b1[2])) > 0.1


def test_each_layer_mean_error_is_zero_in_the_whole_qdq_model() -> None:
    """As bias correction (its definition): after rounding, every Conv's per-channel output mean in the Q/DQ model
    equals the FP32 one on the calibration batches, upstream layers' rounding included (the head had no bias and
    gets one); the scales of the plan are unchanged."""
    model, batches = silu_chain(depth=2, bias=False), image_batches(count=2, size=16, seed=5)  # all rows sampled
    rounded = quantize(model, calib=batches, config=GPTAQ)
    assert any("GPTAQ weight rounding: 3 layer(s) in 3 level(s) over 2 calibration batch(es)" in n
               for n in rounded.report.prepare_notes), rounded.report.prepare_notes
    names = ["c0", "c1", "y"]
    want, got = channel_means(model, names, batches), channel_means(rounded.model, names, batches)
    for name in names:
        np.testing.assert_allclose(got[name], want[name], atol=1e-4 * np.abs(want[name]).max() + 1e-5)
    nearest = quantize(model, calib=batches, config=NEAREST)
    before = channel_means(nearest.model, ["y"], batches)["y"] - want["y"]
    assert np.abs(before).max() > 100 * (np.abs(got["y"] - want["y"]).max() + 1e-6)  # there was a shift

    def scales(m: onnx.ModelProto) -> dict[str, bytes]:
        inits = {i.name: i.raw_data for i in m.graph.initializer}
        return {n.input[0]: inits[n.input[1]] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    assert scales(rounded.model) == scales(nearest.model)


def _linear_chain(seed: int = 0) -> onnx.ModelProto:
    """Two Linear layers as exported (MatMul then Add of a constant) joined by a Relu, tokens ``[n, 6, 16]``."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["m0"], name="fc0"),
             helper.make_node("Add", ["m0", "b0"], ["y0"], name="add0"),
             helper.make_node("Relu", ["y0"], ["r0"], name="relu0"),
             helper.make_node("MatMul", ["r0", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["b1", "m1"], ["y"], name="add1")]
    w0 = (rng.standard_normal((16, 24)) * 0.3).astype(np.float32)
    w0[:, 0] *= 20.0  # one large output sets the next activation range
    inits = [init("w0", w0), init("b0", rng.standard_normal(24).astype(np.float32)),
             init("w1", (rng.standard_normal((24, 8)) * 0.3).astype(np.float32)),
             init("b1", rng.standard_normal((1, 8)).astype(np.float32))]
    graph = helper.make_graph(nodes, "linear_chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def test_matmul_then_add_constant_is_a_linear_layer_with_a_bias() -> None:
    """The Add's constant is the bias column (its shape kept): both Linear outputs' means equal FP32's."""
    model = _linear_chain()
    rng = np.random.default_rng(4)
    batches = [{"x": (rng.standard_normal((4, 6, 16)) + 0.5).astype(np.float32)} for _ in range(4)]
    rounded = quantize(model, calib=batches, config=GPTAQ)
    names = ["y0", "y"]
    want, got = (channel_means(m, names, batches, axis=-1) for m in (model, rounded.model))
    for name in names:
        np.testing.assert_allclose(got[name], want[name], atol=1e-4 * np.abs(want[name]).max() + 1e-5)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in rounded.model.graph.initializer}
    assert inits["b1"].shape == (1, 8)
    assert np.abs(inits["b1"] - onnx.numpy_helper.to_array(model.graph.initializer[3])).max() > 1e-4


def _sqnr(model: onnx.ModelProto, quantized: onnx.ModelProto, batches) -> float:
    acc = ErrorAccumulator()
    for batch in batches:
        acc.add(run(model, batch)[0], run(quantized, batch)[0])
    return acc.sqnr_db


def test_depthwise_hardswish_network_gains_on_held_out_data() -> None:
    """MobileNet-style depthwise + HardSwish stack, full INT8 with the default ranges and equalization: measured on
    evaluation batches never used for calibration, nearest 27.9 dB, GPTQ 27.4 dB, bias correction 38.8 dB,
    GPTAQ 38.8 dB."""
    model = mobilenet_hardswish()
    calib, held_out = image_batches(4, size=32, seed=2), image_batches(4, size=32, seed=9)
    nearest = _sqnr(model, quantize(model, calib=calib, config=NEAREST).model, held_out)
    rounded = _sqnr(model, quantize(model, calib=calib, config=GPTAQ).model, held_out)
    assert rounded > nearest + 6.0, (nearest, rounded)


def test_options() -> None:
    with pytest.raises(OnnxqError, match="pick one"):
        RecoveryOptions(weight_rounding="gptaq", adaround=True)
    assert RecoveryOptions(weight_rounding="gptaq").edits_weights
    # a target's default bias correction gives way to GPTAQ, whose float bias column fits the same mean shift
    assert not RecoveryOptions(weight_rounding="gptaq").corrects_biases(True)
    assert RecoveryOptions(weight_rounding="gptaq", bias_correction=True).corrects_biases(True)
    assert RecoveryOptions().corrects_biases(True) and not RecoveryOptions().corrects_biases(False)
    assert not RecoveryOptions(bias_correction=False).corrects_biases(True)
