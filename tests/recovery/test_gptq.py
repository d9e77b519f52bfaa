"""GPTQ weight rounding: on the calibration inputs, a layer's output error is at most nearest rounding's (far below it
on an ill-conditioned depthwise layer), grouped convolutions are solved per group, the plan's scales are kept and
the quantized model runs in onnxruntime."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxq.config import NodeSetting, Overrides, QuantConfig, RecoveryOptions
from onnxq.errors import OnnxqError
from onnxq.insert.qdq import broadcast_params
from onnxq.pipeline import quantize
from onnxq.recovery.gptq import HessianSum, layer_error, linear_view, round_layer, round_to_grid
from onnxq.scales.types import QuantParams
from onnxq.validate.metrics import ErrorAccumulator
from tests.helpers import init, make_model, run


def _per_channel(w: np.ndarray, axis: int, dtype: str = "int8") -> QuantParams:
    qmax = 127 if dtype == "int8" else 7
    scale = np.abs(w).max(axis=tuple(a for a in range(w.ndim) if a != axis)) / qmax
    return QuantParams(scale.astype(np.float32), np.zeros(scale.shape, np.int8), dtype, axis)


def _errors(node: onnx.NodeProto, w: np.ndarray, x: np.ndarray, params: QuantParams) -> tuple[float, float, np.ndarray]:
    """(nearest, GPTQ) relative output error of the layer on ``x`` (the inputs GPTQ saw), and GPTQ's weights."""
    view = linear_view(node, w.shape)
    assert view is not None
    scale, zp = broadcast_params(params, w.shape)
    lo, hi = (-127, 127) if params.dtype == "int8" else (-7, 7)
    hessian = HessianSum(view, rows_per_batch=1 << 30)
    hessian.add(x, np.random.default_rng(0))
    rounded = round_layer(view, w, hessian.mean(), params)
    # on the plan's grid: QuantizeLinear with the same scale reproduces the chosen integers exactly
    np.testing.assert_array_equal(round_to_grid(rounded, scale, zp, lo, hi), rounded)
    assert np.all(np.abs(rounded - w) <= np.abs(w).max() + 1e-6)
    return layer_error(view, x, w, round_to_grid(w, scale, zp, lo, hi)), layer_error(view, x, w, rounded), rounded


def test_conv_output_error_at_most_nearest() -> None:
    rng = np.random.default_rng(0)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2], kernel_shape=[3, 3])
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    x = (rng.standard_normal((4, 8, 16, 16)) + 1.0).astype(np.float32)
    nearest, gptq, _ = _errors(node, w, x, _per_channel(w, 0))
    assert gptq < 0.8 * nearest, (gptq, nearest)


def test_matmul_per_channel_and_int4_blocks_at_most_nearest() -> None:
    rng = np.random.default_rng(1)
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    w = rng.standard_normal((64, 24)).astype(np.float32)  # [in, out]: per-channel axis 1
    x = (rng.standard_normal((6, 20, 64)) @ rng.standard_normal((64, 64))).astype(np.float32)  # correlated
    nearest, gptq, _ = _errors(node, w, x, _per_channel(w, 1))
    assert gptq < 0.8 * nearest, (gptq, nearest)
    scale = (np.abs(w.reshape(2, 32, 24)).max(axis=1) / 7).astype(np.float32)  # int4, blocks of 32 along K
    blocks = QuantParams(scale, np.zeros(scale.shape, np.int8), "int4", axis=0, block_size=32)
    nearest, gptq, _ = _errors(node, w, x, blocks)
    assert gptq < 0.8 * nearest, (gptq, nearest)


def test_gemm_transposed_weight() -> None:
    rng = np.random.default_rng(2)
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    w = rng.standard_normal((12, 32)).astype(np.float32)  # [out, in]
    x = (rng.standard_normal((256, 32)) @ rng.standard_normal((32, 32))).astype(np.float32)
    nearest, gptq, _ = _errors(node, w, x, _per_channel(w, 0))
    assert gptq < 0.8 * nearest, (gptq, nearest)


def _zero_sum_depthwise(channels: int, seed: int) -> tuple[onnx.NodeProto, np.ndarray, np.ndarray]:
    """A depthwise 3x3 of zero-sum (edge-detector) kernels on a nearly constant input (mean -3.2, std 0.005): the
    output is a small difference of large terms, so rounding errors are amplified (seen in PP-OCRv4 rec)."""
    rng = np.random.default_rng(seed)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=channels, pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    w = rng.standard_normal((channels, 1, 3, 3)).astype(np.float32)
    w -= w.mean(axis=(2, 3), keepdims=True)
    x = (-3.2 + 0.005 * rng.standard_normal((4, channels, 16, 16))).astype(np.float32)
    return node, w, x


def test_ill_conditioned_depthwise_far_below_nearest() -> None:
    node, w, x = _zero_sum_depthwise(8, seed=3)
    nearest, gptq, _ = _errors(node, w, x, _per_channel(w, 0))
    assert gptq < 0.1 * nearest, (gptq, nearest)


def test_depthwise_channels_are_solved_independently() -> None:
    node, w, x = _zero_sum_depthwise(8, seed=4)
    _, _, together = _errors(node, w, x, _per_channel(w, 0))
    single = helper.make_node("Conv", ["x", "w"], ["y"], group=1, pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    for c in (0, 5):
        _, _, alone = _errors(single, w[c : c + 1], x[:, c : c + 1], _per_channel(w[c : c + 1], 0))
        np.testing.assert_allclose(together[c], alone[0], rtol=0, atol=1e-6)


def _small_model() -> onnx.ModelProto:
    """Depthwise (zero-sum kernels) -> Conv -> Flatten -> MatMul, input (N, 4, 8, 8)."""
    rng = np.random.default_rng(5)
    dw = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    dw -= dw.mean(axis=(2, 3), keepdims=True)
    nodes = [
        helper.make_node("Conv", ["x", "w_dw"], ["d"], name="dw", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d", "w_pw"], ["p"], name="pw"),
        helper.make_node("Relu", ["p"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w_fc"], ["y"], name="fc"),
    ]
    inits = [init("w_dw", dw), init("w_pw", (rng.standard_normal((8, 4, 1, 1)) * 0.5).astype(np.float32)),
             init("w_fc", (rng.standard_normal((512, 10)) * 0.05).astype(np.float32))]
    graph = helper.make_graph(nodes, "gptq_net",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return make_model(graph)


def _batches(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": (1.5 + 0.05 * rng.standard_normal((8, 4, 8, 8))).astype(np.float32)} for _ in range(count)]


def _dq_scales(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: inits[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear"}


@pytest.mark.parametrize(("fmt", "margin_db"), [("w8", 3.0), (None, 0.5)])
def test_model_keeps_scales_runs_in_onnxruntime_and_loses_less(fmt: str | None, margin_db: float) -> None:
    """Weight-only: the weights are the whole error and GPTQ removes much of it; full INT8: the activations'
    error stays, GPTQ still lowers the total."""
    model, calib = _small_model(), _batches(4, seed=6)
    overrides = Overrides(global_setting=NodeSetting(dtype=fmt)) if fmt else Overrides()
    # GPTQ never runs with the activation shift (tensorrt's default): nearest rounding compared on the same graph
    plain = QuantConfig(overrides=overrides, recovery=RecoveryOptions(activation_shift=False))
    nearest_cfg = replace(plain, recovery=replace(plain.recovery, weight_rounding="nearest"))
    gptq_cfg = replace(nearest_cfg, recovery=replace(nearest_cfg.recovery, weight_rounding="gptq"))
    nearest = quantize(model, calib=calib, config=nearest_cfg)
    gptq = quantize(model, calib=calib, config=gptq_cfg)
    assert any("GPTQ weight rounding: 3 layer(s)" in n for n in gptq.report.prepare_notes), gptq.report.prepare_notes
    before, after = _dq_scales(nearest.model), _dq_scales(gptq.model)
    assert before.keys() == after.keys() and before
    for name in before:  # the Q/DQ graph and its scales are those of the plan
        np.testing.assert_array_equal(before[name], after[name])
    errors = {}
    for label, result in (("nearest", nearest), ("gptq", gptq)):
        acc = ErrorAccumulator()
        for batch in calib:
            acc.add(run(model, batch)[0], run(result.model, batch)[0])  # onnxruntime runs the Q/DQ model
        errors[label] = acc.sqnr_db
    assert errors["gptq"] > errors["nearest"] + margin_db, errors
    # the input model is not modified
    assert onnx.numpy_helper.to_array(model.graph.initializer[0]).tobytes() == \
        onnx.numpy_helper.to_array(_small_model().graph.initializer[0]).tobytes()


@pytest.mark.parametrize(("fmt", "applied"), [("w8", True), (None, False)])
def test_auto_rounding_is_gptq_on_weight_only_plans(fmt: str | None, applied: bool) -> None:
    """The default (``auto``) rounds by GPTQ when only weights are quantized, and to nearest when activations are
    quantized too (with calibration data in both cases); equal to the explicit choice."""
    model, calib = _small_model(), _batches(4, seed=6)
    overrides = Overrides(global_setting=NodeSetting(dtype=fmt)) if fmt else Overrides()
    auto_cfg = QuantConfig(overrides=overrides)
    assert auto_cfg.recovery.weight_rounding == "auto"
    chosen = "gptq" if applied else "nearest"
    explicit_cfg = replace(auto_cfg, recovery=replace(auto_cfg.recovery, weight_rounding=chosen))
    auto, explicit = quantize(model, calib=calib, config=auto_cfg), quantize(model, calib=calib, config=explicit_cfg)
    assert any("GPTQ" in n for n in auto.report.prepare_notes) == applied, auto.report.prepare_notes
    assert auto.model.SerializeToString() == explicit.model.SerializeToString()


def test_options_checked() -> None:
    with pytest.raises(OnnxqError, match="weight-rounding"):
        RecoveryOptions(weight_rounding="random")  # type: ignore[arg-type]
    with pytest.raises(OnnxqError, match="pick one"):
        RecoveryOptions(weight_rounding="gptq", adaround=True)
