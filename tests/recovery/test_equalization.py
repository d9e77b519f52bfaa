"""Equalization is exact in FP32 and equalizes the depthwise input channels; SmoothQuant is exact too."""

from __future__ import annotations

import copy

import numpy as np

from onnxq.config import RecoveryOptions
from onnxq.recovery.channel_scale import ChannelTarget, channel_statistics
from onnxq.recovery.equalization import MIN_SCALE, cle_scales
from onnxq.recovery.smoothquant import smooth_scales
from onnxq.recovery.stage import equalize
from tests.helpers import assert_equivalent, op_types
from tests.recovery.nets_recovery import (
    image_batches,
    matmul_model,
    mobilenet_hardswish,
    outlier_batches,
    separable_block,
)


def test_equalization_leaves_fp32_outputs_unchanged_and_balances_depthwise_inputs() -> None:
    model = separable_block()
    data = image_batches()
    before = channel_statistics(model, [ChannelTarget("dw", "h1", 1)], data, 4)[0]["h1"]
    equalized = copy.deepcopy(model)
    notes = equalize(equalized, data, RecoveryOptions(equalize=True, bias_correction=False, equalize_batches=4))
    # pairs: dw -> conv3 (identity), conv3 -> Relu -> conv4, conv4 -> PRelu -> conv5
    assert "3 Conv pair(s)" in notes[0] and "1 depthwise input(s) (0 folded" in notes[0], notes
    # HardSwish is not positive-homogeneous: a Mul after it; Relu and PRelu joins fold into the Convs (no Mul)
    assert op_types(equalized).count("Mul") == 1
    for batch in data:
        assert_equivalent(model, equalized, batch, rtol=1e-5)
    dw_input = next(n for n in equalized.graph.node if n.name == "dw").input[0]
    after = channel_statistics(equalized, [ChannelTarget("dw", dw_input, 1)], data, 4)[0][dw_input]
    assert before.max() / before.min() > 20
    lifted = before >= before.max() * MIN_SCALE  # channels more than 1/MIN_SCALE below the widest are lifted 100x
    assert lifted.sum() >= len(before) - 2
    np.testing.assert_allclose(after[lifted], after.max(), rtol=1e-4)  # they all span the full range now
    np.testing.assert_allclose(after[~lifted], before[~lifted] / MIN_SCALE, rtol=1e-4)


def test_cle_scales_give_both_layers_the_geometric_mean_range() -> None:
    r1, r2 = np.array([4.0, 0.5, 2.0]), np.array([1.0, 8.0, 0.0])
    s = cle_scales(r1, r2)
    np.testing.assert_allclose((r1 / s)[:2], (r2 * s)[:2])
    np.testing.assert_allclose((r1 / s)[:2], np.sqrt(r1 * r2)[:2])
    assert s[2] == 1.0  # a zero range is left alone


def test_smoothquant_is_exact_and_follows_its_formula() -> None:
    for gemm in (False, True):
        model = matmul_model(gemm=gemm)
        data = outlier_batches(gemm=gemm)
        smoothed = copy.deepcopy(model)
        notes = equalize(smoothed, data, RecoveryOptions(equalize=False, smoothquant_alpha=0.5, equalize_batches=3))
        assert notes[0] == "SmoothQuant (alpha 0.5): 1 MatMul/Gemm input(s)" and "recorded" in notes[1]
        for batch in data:
            assert_equivalent(model, smoothed, batch, rtol=1e-5)
        mm = next(n for n in smoothed.graph.node if n.name == "mm")
        a = channel_statistics(model, [ChannelTarget("mm", "x", -1)], data, 3)[0]["x"]
        a_after = channel_statistics(smoothed, [ChannelTarget("mm", mm.input[0], -1)], data, 3)[0][mm.input[0]]
        w = np.array([i for i in model.graph.initializer if i.name == "w"][0].float_data or
                     np.frombuffer([i for i in model.graph.initializer if i.name == "w"][0].raw_data, np.float32))
        w = w.reshape((8, 16)).T if gemm else w.reshape((16, 8))
        s = smooth_scales(a, np.abs(w).max(axis=1), 0.5)
        np.testing.assert_allclose(a_after, a / s, rtol=1e-5)
        assert a_after.max() / a_after.min() < a.max() / a.min()


def test_depthwise_network_equalization_is_exact() -> None:
    model = mobilenet_hardswish()
    data = image_batches(size=32)
    equalized = copy.deepcopy(model)
    equalize(equalized, data, RecoveryOptions(equalize=True))
    assert op_types(equalized).count("Mul") == 3
    for batch in data[:2]:
        assert_equivalent(model, equalized, batch, rtol=1e-5)
