"""The streaming histogram and what every calibrator promises: exact merges, round trips, bounded memory, edge cases."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from onnxq.calib.base import CalibOptions
from onnxq.calib.histogram import E_MIN, StreamingHistogram, fine_bins, grid_exponent, regrid
from onnxq.calib.methods import CALIBRATORS, make_calibrator
from onnxq.config import QuantConfig
from onnxq.errors import OnnxqError
from onnxq.scales.types import asymmetric_params, symmetric_params

METHODS = ["minmax", "percentile", "entropy", "mse"]
BINS = fine_bins(2048)


def batches(seed: int = 0) -> list[np.ndarray]:
    """Batches whose range grows several times (and shrinks), with a NaN and an inf sprinkled in."""
    rng = np.random.default_rng(seed)
    out = []
    for scale in [0.01, 0.5, 0.02, 3.0, 1.0, 40.0, 2.0, 0.3]:
        x = (rng.standard_normal((4, 3, 17, 5)) * scale + scale * 0.2).astype(np.float32)
        out.append(x)
    out[2].flat[7] = np.nan
    out[4].flat[3] = np.inf
    out[6].flat[11] = -np.inf
    return out


def exact_counts(x: np.ndarray, exponent: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: float64 floor(|x| * 2**(log2 bins - e)) per sign."""
    x = x[np.isfinite(x)].astype(np.float64)
    j = np.floor(np.abs(x) * 2.0 ** (np.log2(bins) - exponent)).astype(np.int64)
    return np.bincount(j[x >= 0], minlength=bins), np.bincount(j[x < 0], minlength=bins)


def run(method: str, data: list[np.ndarray], **options) -> object:
    cal = make_calibrator(CalibOptions(method=method, **options))
    for x in data:
        cal.collect(x)
    return cal


def assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key
        assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype, key


# ---- the grid


def test_fine_bins_and_exponent():
    assert fine_bins(2048) == 16384
    assert fine_bins(1000) == 8192
    assert grid_exponent(1.0) == 1  # 1.0 < 2**1, in the upper half [1, 2)
    assert grid_exponent(0.75) == 0
    assert grid_exponent(0.0) == E_MIN


def test_growing_range_equals_binning_in_the_final_grid():
    data = batches()
    hist = StreamingHistogram(BINS)
    for x in data:
        x = x[np.isfinite(x)]
        hist.add(x.ravel(), float(x.min()), float(x.max()))
    everything = np.concatenate([x[np.isfinite(x)].ravel() for x in data])
    one_shot = StreamingHistogram(BINS)
    one_shot.add(everything, float(everything.min()), float(everything.max()))
    assert hist.exponent == one_shot.exponent == grid_exponent(float(np.abs(everything).max()))
    assert np.array_equal(hist.pos, one_shot.pos) and np.array_equal(hist.neg, one_shot.neg)
    pos, neg = exact_counts(everything, hist.exponent, BINS)
    assert np.array_equal(hist.pos, pos) and np.array_equal(hist.neg, neg)
    assert hist.count == everything.size


def test_edges_and_signed_zero_on_the_grid():
    w = 2.0**-14  # exponent 0: range [0, 1)
    x = np.array([0.0, -0.0, w, -w, w * 0.5, -w * 0.5, 1 - w, -(1 - w), 3 * w, -3 * w], dtype=np.float32)
    hist = StreamingHistogram(BINS)
    hist.add(x, float(x.min()), float(x.max()))
    assert hist.exponent == 0
    pos, neg = exact_counts(x, 0, BINS)
    assert np.array_equal(hist.pos, pos) and np.array_equal(hist.neg, neg)
    assert hist.pos[0] == 3 and hist.neg[0] == 1  # 0, -0 and w/2 | -w/2
    assert hist.pos[1] == 1 and hist.neg[1] == 1 and hist.neg[3] == 1


def test_regrid_sums_groups():
    counts = np.arange(16, dtype=np.int64)
    assert np.array_equal(regrid(counts, 2)[:4], counts.reshape(4, 4).sum(1))
    assert regrid(counts, 2)[4:].sum() == 0
    assert regrid(counts, 9)[0] == counts.sum()


def test_memory_is_bounded():
    cal = make_calibrator(CalibOptions(method="entropy"))
    rng = np.random.default_rng(0)
    for i in range(20):
        cal.collect(rng.standard_normal(50_000).astype(np.float32) * (i + 1))
    state = cal.state()
    assert sum(np.asarray(v).nbytes for v in state.values()) <= 2 * 8 * BINS + 64


# ---- every method: shards, round trips, edge cases


@pytest.mark.parametrize("method", METHODS)
def test_merge_of_shards_equals_one_run(method):
    data = batches(1)
    single = run(method, data)
    shards = [run(method, data[:3]), run(method, data[3:5]), run(method, data[5:])]
    # merge directly, in another order, and through a state round trip
    direct = shards[0]
    for shard in shards[1:]:
        direct.merge(shard)
    reordered = run(method, data[5:])
    for part in (data[:3], data[3:5]):
        reordered.merge(run(method, part))
    cls = CALIBRATORS[method]
    options = CalibOptions(method=method)
    via_state = cls.from_state(run(method, data[:3]).state(), options)
    for part in (data[3:5], data[5:]):
        via_state.merge(cls.from_state(run(method, part).state(), options))
    for merged in (direct, reordered, via_state):
        assert_state_equal(merged.state(), single.state())
        for symmetric in (True, False):
            assert merged.compute_range(symmetric) == single.compute_range(symmetric)


@pytest.mark.parametrize("method", METHODS)
def test_state_round_trip(method, tmp_path):
    cal = run(method, batches(2))
    path = tmp_path / "state.npz"
    np.savez(path, **cal.state())
    with np.load(path) as npz:
        loaded = CALIBRATORS[method].from_state(dict(npz), cal.options)
    assert_state_equal(loaded.state(), cal.state())
    for symmetric in (True, False):
        assert loaded.compute_range(symmetric) == cal.compute_range(symmetric)


@pytest.mark.parametrize("method", METHODS)
def test_non_finite_values_are_ignored(method):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(10_000).astype(np.float32)
    dirty = x.copy()
    dirty[::97] = np.nan
    dirty[5] = np.inf
    dirty[6] = -np.inf
    clean = np.delete(x, np.r_[np.arange(0, x.size, 97), 5, 6])
    a, b = run(method, [dirty]), run(method, [clean])
    assert_state_equal(a.state(), b.state())
    for symmetric in (True, False):
        lo, hi = a.compute_range(symmetric)
        assert np.isfinite(lo) and np.isfinite(hi)
        assert (lo, hi) == b.compute_range(symmetric)


@pytest.mark.parametrize("method", METHODS)
def test_all_zero_tensor_gives_zero_range_and_finite_scale(method):
    cal = run(method, [np.zeros((2, 3, 4), np.float32), np.full(5, -0.0, np.float32)])
    assert cal.compute_range(True) == (0.0, 0.0) or cal.compute_range(True) == (-0.0, 0.0)
    assert cal.compute_range(False) == (0.0, 0.0)
    assert float(symmetric_params(0.0).scale) == 1.0
    assert float(asymmetric_params(0.0, 0.0).scale) == 1.0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value", [3.25, -0.1, 1e-30])
def test_constant_tensor_gives_finite_positive_range(method, value):
    cal = run(method, [np.full((8, 8), value, np.float32)] * 3)
    lo, hi = cal.compute_range(True)
    amax = abs(np.float32(value))
    assert 0 < hi <= amax * (1 + 1e-6) and lo == -hi
    assert hi >= amax * 0.5  # the constant is not clipped away
    assert np.all(np.isfinite(symmetric_params(hi).scale))
    lo, hi = cal.compute_range(False)
    assert np.isfinite(lo) and np.isfinite(hi) and hi - lo >= 0


@pytest.mark.parametrize("method", METHODS)
def test_nothing_collected_raises(method):
    cal = run(method, [np.array([np.nan, np.inf], np.float32), np.zeros(0, np.float32)])
    with pytest.raises(OnnxqError, match="no finite values"):
        cal.compute_range(True)


@pytest.mark.parametrize("method", METHODS)
def test_merge_checks_method_and_options(method):
    other_method = "percentile" if method != "percentile" else "entropy"
    with pytest.raises(OnnxqError, match="cannot merge"):
        run(method, batches()).merge(run(other_method, batches()))
    with pytest.raises(OnnxqError, match="cannot merge"):
        run(method, batches()).merge(run(method, batches(), num_bins=1024))


def test_from_state_with_other_bins_raises():
    state = run("percentile", batches()).state()
    with pytest.raises(OnnxqError, match="--num-bins"):
        CALIBRATORS["percentile"].from_state(state, CalibOptions(method="percentile", num_bins=512))


# ---- options


@pytest.mark.parametrize("percentile", [0.0, -1.0, 100.01, 250.0])
def test_percentile_out_of_bounds_raises(percentile):
    with pytest.raises(OnnxqError, match=r"\(0, 100\]"):
        CalibOptions(method="percentile", percentile=percentile)


def test_option_checks():
    CalibOptions(method="percentile", percentile=100.0)
    with pytest.raises(OnnxqError, match="unknown calibration method"):
        make_calibrator(CalibOptions(method="kl"))
    with pytest.raises(OnnxqError, match="unknown calibration method"):
        QuantConfig(calib=CalibOptions(method="kl"))
    with pytest.raises(OnnxqError, match="num-bins"):
        CalibOptions(method="entropy", num_bins=100)
    with pytest.raises(OnnxqError, match="momentum"):
        CalibOptions(momentum=1.0)
    with pytest.raises(OnnxqError, match="num_bits"):
        CalibOptions(num_bits=9)


def test_options_work_with_only_base_imported():
    code = (
        "from onnxq.calib.base import CalibOptions\n"
        "from onnxq.calib.methods import make_calibrator\n"
        "import numpy as np\n"
        "for m in ('minmax', 'percentile', 'entropy', 'mse'):\n"
        "    c = make_calibrator(CalibOptions(method=m)); c.collect(np.ones(3, np.float32)); c.compute_range(True)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- minmax moving average


def test_minmax_moving_average():
    xs = [np.array([-1.0, 2.0], np.float32), np.array([-3.0, 4.0], np.float32), np.array([-5.0, 0.0], np.float32)]
    cal = run("minmax", xs, momentum=0.9)
    lo = 0.9 * (0.9 * -1.0 + 0.1 * -3.0) + 0.1 * -5.0
    hi = 0.9 * (0.9 * 2.0 + 0.1 * 4.0) + 0.1 * 0.0
    assert cal.compute_range(False) == pytest.approx((lo, hi))
    assert cal.compute_range(True) == pytest.approx((-max(-lo, hi), max(-lo, hi)))
    assert run("minmax", xs).compute_range(False) == (-5.0, 4.0)


def test_minmax_moving_average_merge_is_batch_weighted():
    xs = [np.array([-float(i), 2.0 * i], np.float32) for i in range(1, 6)]
    a, b = run("minmax", xs[:2], momentum=0.5), run("minmax", xs[2:], momentum=0.5)
    expected_lo = (2 * a.lo + 3 * b.lo) / 5
    expected_hi = (2 * a.hi + 3 * b.hi) / 5
    a.merge(b)
    assert (a.lo, a.hi, a.batches) == pytest.approx((expected_lo, expected_hi, 5))
    # symmetric in the shards
    c, d = run("minmax", xs[2:], momentum=0.5), run("minmax", xs[:2], momentum=0.5)
    c.merge(d)
    assert (c.lo, c.hi) == pytest.approx((a.lo, a.hi))


def test_fraction_outside_counts_bins_wholly_beyond_the_range():
    from onnxq.calib.base import CalibOptions
    from onnxq.calib.percentile import PercentileCalibrator

    cal = PercentileCalibrator(CalibOptions(method="percentile"))
    cal.collect(np.array([-3.0, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0], np.float32))
    assert cal.clipped_fraction(-4.0, 4.0) == 0.0
    assert cal.clipped_fraction(-1.0, 1.5) == pytest.approx(3 / 8)  # -3, 2, 4
    assert cal.clipped_fraction(0.0, 0.75) == pytest.approx(5 / 8)  # -3, -0.5, 1, 2, 4
