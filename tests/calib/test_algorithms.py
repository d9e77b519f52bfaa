"""Each histogram algorithm against an independent brute-force reference on known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from onnxq.calib.base import CalibOptions
from onnxq.calib.entropy import entropy_threshold_bin
from onnxq.calib.histogram import resample_abs
from onnxq.calib.methods import make_calibrator
from onnxq.errors import OnnxqError
from tests.calib.calib_reference import (
    entropy_reference_bin,
    fake_quant_asymmetric,
    fake_quant_symmetric,
    random_samples,
    stratified_samples,
)

RANDOM = random_samples()
STRATIFIED = stratified_samples()
DISTRIBUTIONS = list(RANDOM)


def calibrate(method: str, x: np.ndarray, batches: int = 4, **options):
    cal = make_calibrator(CalibOptions(method=method, **options))
    for part in np.array_split(x, batches):
        cal.collect(part)
    return cal


# ---- percentile


@pytest.mark.parametrize("name", DISTRIBUTIONS)
@pytest.mark.parametrize("p", [99.0, 99.99, 99.999])
def test_percentile_matches_numpy(name, p):
    x = RANDOM[name]
    cal = calibrate("percentile", x, percentile=p)
    width = cal.hist.width
    lo, hi = cal.compute_range(True)
    assert lo == -hi
    assert abs(hi - np.percentile(np.abs(x), p)) <= width
    cut = (100 - p) / 2
    expected = np.percentile(x, [cut, 100 - cut])
    assert np.abs(np.array(cal.compute_range(False)) - expected).max() <= width


def test_percentile_100_is_minmax():
    x = RANDOM["gaussian+outliers"]
    cal = calibrate("percentile", x, percentile=100.0)
    assert cal.compute_range(True)[1] == float(np.abs(x).max())
    assert cal.compute_range(False) == (float(x.min()), float(x.max()))


# ---- entropy


@pytest.fixture(scope="module")
def entropy_reference() -> dict[str, tuple[int, np.ndarray]]:
    """TensorRT-style search bin on the raw samples' own 2048-bin histogram of |x| over [0, max|x|]."""
    out = {}
    for name, x in RANDOM.items():
        hist, _ = np.histogram(np.abs(x), bins=2048, range=(0, float(np.abs(x).max())))
        out[name] = (entropy_reference_bin(hist), hist)
    return out


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_entropy_search_equals_reference_loop(name, entropy_reference):
    reference_bin, hist = entropy_reference[name]
    assert entropy_threshold_bin(hist) == reference_bin


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_entropy_calibrator_matches_reference_within_one_bin(name, entropy_reference):
    x = RANDOM[name]
    reference_bin, _ = entropy_reference[name]
    amax = float(np.abs(x).max())
    step = amax / 2048
    cal = calibrate("entropy", x)
    lo, hi = cal.compute_range(True)
    assert lo == -hi
    assert abs(hi - reference_bin * step) <= step * 1.000001
    # the streaming histogram resampled onto the search grid is the raw samples' histogram, nearly
    resampled = resample_abs(cal.hist, 2048)
    raw = entropy_reference[name][1]
    assert resampled.sum() == pytest.approx(raw.sum())
    assert np.abs(np.cumsum(resampled) - np.cumsum(raw)).max() <= 0.01 * x.size
    # asymmetric: the symmetric threshold clipped to the observed range
    alo, ahi = cal.compute_range(False)
    assert alo == max(float(x.min()), -hi) and ahi == min(float(x.max()), hi)


def test_entropy_relu_keeps_zero_spike_out_of_the_way():
    x = RANDOM["relu"]
    assert (x == 0).mean() > 0.3
    lo, hi = calibrate("entropy", x).compute_range(False)
    assert lo == 0.0 and 0 < hi <= x.max()


# ---- mse (stratified samples: the brute-force error curve is smooth, so its argmin is well defined)


def brute_force_mse(x: np.ndarray, num_bins: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Squared error of fake-quantizing the samples at every candidate; returns (candidates, errors)."""
    x = x.astype(np.float64)
    k = np.arange(1, num_bins + 1)
    if symmetric:
        amaxes = k * (np.abs(x).max() / num_bins)
        return amaxes, np.array([np.sum((fake_quant_symmetric(x, a) - x) ** 2) for a in amaxes])
    lo0, hi0 = min(x.min(), 0.0), max(x.max(), 0.0)
    alphas = k / num_bins
    errors = [np.sum((fake_quant_asymmetric(x, a * lo0, a * hi0) - x) ** 2) for a in alphas]
    return alphas, np.array(errors)


@pytest.mark.parametrize("name", DISTRIBUTIONS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_matches_brute_force_fake_quantization(name, symmetric):
    x = STRATIFIED[name]
    num_bins = 512
    candidates, errors = brute_force_mse(x, num_bins, symmetric)
    best = int(np.argmin(errors))
    cal = calibrate("mse", x, num_bins=num_bins)
    lo, hi = cal.compute_range(symmetric)
    if symmetric:
        assert lo == -hi
        chosen = int(round(hi / candidates[0])) - 1
    else:
        hi0 = max(float(x.max()), 0.0)
        chosen = int(round(hi / hi0 * num_bins)) - 1
        assert lo == pytest.approx(candidates[chosen] * min(float(x.min()), 0.0))
    assert abs(chosen - best) <= 1, (chosen, best)
    assert errors[chosen] <= errors[best] * 1.0005


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_mse_on_random_samples_is_near_optimal(name):
    """Sampling noise makes the brute-force argmin ragged; the error reached must still be within 0.5%."""
    x = RANDOM[name][:100_000]
    candidates, errors = brute_force_mse(x, 512, True)
    hi = calibrate("mse", x, num_bins=512).compute_range(True)[1]
    chosen = int(round(hi / candidates[0])) - 1
    assert errors[chosen] <= errors.min() * 1.005


def test_mse_trades_clipping_against_rounding():
    """A lone outlier at 40 sigma: kept among 1e5 values (rounding 1e5 values costs more), clipped among 1e6."""
    from scipy import stats

    for n, clipped in [(100_000, False), (1_000_000, True)]:
        x = np.append(stats.norm.ppf((np.arange(n) + 0.5) / n), 40.0).astype(np.float32)
        amax = calibrate("mse", x).compute_range(True)[1]
        assert (amax < 8.0) == clipped, (n, amax)


# ---- mse: clip only when it pays (CalibOptions.min_clip_gain)


def _coordinates(n: int = 100_000) -> np.ndarray:
    """U(-1, 1) + N(0, 0.02) from evenly spread quantiles: a flat, bounded distribution (point coordinates with
    sensor noise)."""
    from scipy import stats

    u = (np.arange(n) + 0.5) / n
    noise = np.random.default_rng(2).permutation(stats.norm.ppf(u)) * 0.02
    return (np.random.default_rng(0).permutation(u * 2 - 1) + noise).astype(np.float32)


@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_keeps_min_max_when_clipping_saves_little(symmetric):
    """On a flat distribution the MSE optimum clips a little and saves under 5% of min-max's error (checked by
    brute-force fake quantization): the default keeps the min-max range, ``min_clip_gain=0`` the plain optimum."""
    x = _coordinates()
    lo0, hi0 = float(x.min()), float(x.max())
    plain = calibrate("mse", x, num_bins=512, min_clip_gain=0.0).compute_range(symmetric)
    kept = calibrate("mse", x, num_bins=512).compute_range(symmetric)
    assert kept == ((-max(-lo0, hi0), max(-lo0, hi0)) if symmetric else (lo0, hi0))
    assert plain[1] < 0.99 * hi0  # the plain optimum does clip
    if symmetric:
        err_plain = np.sum((fake_quant_symmetric(x.astype(np.float64), plain[1]) - x) ** 2)
        err_full = np.sum((fake_quant_symmetric(x.astype(np.float64), hi0) - x) ** 2)
    else:
        err_plain = np.sum((fake_quant_asymmetric(x.astype(np.float64), *plain) - x) ** 2)
        err_full = np.sum((fake_quant_asymmetric(x.astype(np.float64), lo0, hi0) - x) ** 2)
    assert 0.95 * err_full < err_plain < err_full


@pytest.mark.parametrize("name", DISTRIBUTIONS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_clips_where_it_pays(name, symmetric):
    """Bell-shaped and heavy-tailed tensors gain far more than 5% from clipping: the default is the plain optimum."""
    x = STRATIFIED[name]
    plain = calibrate("mse", x, num_bins=512, min_clip_gain=0.0).compute_range(symmetric)
    assert calibrate("mse", x, num_bins=512).compute_range(symmetric) == plain
    assert plain[1] < 0.97 * float(np.abs(x).max() if symmetric else x.max())


def test_min_clip_gain_is_checked():
    with pytest.raises(OnnxqError, match="min-clip-gain"):
        CalibOptions(min_clip_gain=1.0)
