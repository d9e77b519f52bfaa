"""Per-channel weight ranges: minmax and the MSE clip search against a brute-force scan."""

from __future__ import annotations

import numpy as np
import pytest

from onnxq.calib.weights import weight_amax
from onnxq.errors import OnnxqError
from tests.calib.calib_reference import fake_quant_symmetric


def conv_weight(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((16, 8, 3, 3)) * rng.uniform(0.01, 1.0, (16, 1, 1, 1))
    w[3] = rng.laplace(size=(8, 3, 3)) * 0.2  # heavy tails
    w[4, 0, 0, 0] = 5.0  # one outlier
    w[7] = 0.0  # dead channel
    return w.astype(np.float32)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_minmax_per_channel(axis):
    w = conv_weight()
    expected = np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(axis=1)
    assert np.array_equal(weight_amax(w, axis, "minmax"), expected)
    assert weight_amax(w, None, "minmax").shape == ()
    assert float(weight_amax(w, None, "minmax")) == np.abs(w).max()


@pytest.mark.parametrize("num_bits", [8, 4])
def test_mse_matches_brute_force(num_bits):
    w = conv_weight(1)
    qmax = (1 << (num_bits - 1)) - 1
    amax = weight_amax(w, 0, "mse", num_bits=num_bits)
    maxes = weight_amax(w, 0, "minmax")
    alphas = np.arange(1, 401) / 400  # the search's fine grid, everywhere
    for c in range(w.shape[0]):
        row = w[c].ravel().astype(np.float64)
        if maxes[c] == 0:
            assert amax[c] == 0
            continue
        errors = np.array([np.sum((fake_quant_symmetric(row, a * maxes[c], qmax) - row) ** 2) for a in alphas])
        mine = np.sum((fake_quant_symmetric(row, amax[c], qmax) - row) ** 2)
        assert mine <= errors.min() * 1.001 + 1e-12, c
        assert 0 < amax[c] <= maxes[c]
    assert amax[4] < 5.0  # the outlier is clipped at 8 bits


def test_mse_is_per_tensor_without_axis():
    w = conv_weight(2)
    amax = weight_amax(w, None, "mse")
    assert amax.shape == () and 0 < float(amax) <= np.abs(w).max()


def test_bad_input_raises():
    w = conv_weight()
    with pytest.raises(OnnxqError, match="weight method"):
        weight_amax(w, 0, "entropy")
    with pytest.raises(OnnxqError, match="axis"):
        weight_amax(w, 4, "minmax")
    bad = w.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(OnnxqError, match="NaN"):
        weight_amax(bad, 0, "mse")
