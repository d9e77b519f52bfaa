"""The streaming error metrics: the float32 fast path equals exact float64 sums; NaN/Inf take the masked path."""

import math

import numpy as np

from onnxq.validate.metrics import ErrorAccumulator, sqnr_db


def exact(x: np.ndarray, y: np.ndarray) -> dict:
    x, y = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
    d = x - y
    return {"signal": x @ x, "noise": d @ d, "approx": y @ y, "dot": x @ y, "abs_err": np.abs(d).sum(),
            "max_err": np.abs(d).max()}


def test_fast_path_matches_float64_sums():
    rng = np.random.default_rng(0)
    acc = ErrorAccumulator()
    total = {k: 0.0 for k in ("signal", "noise", "approx", "dot", "abs_err")}
    for _ in range(3):
        x = (rng.standard_normal((4, 16, 33, 17)) * 50).astype(np.float32)
        y = x + rng.standard_normal(x.shape).astype(np.float32) * 0.1
        acc.add(x, y)
        for k, v in exact(x, y).items():
            if k != "max_err":
                total[k] += v
    for k, v in total.items():
        assert math.isclose(getattr(acc, k), v, rel_tol=1e-6), k
    assert acc.count == 3 * 4 * 16 * 33 * 17 and acc.nonfinite == 0


def test_nonfinite_values_are_masked_and_counted():
    x = np.array([1.0, 2.0, np.nan, 4.0], np.float32)
    y = np.array([1.0, 2.5, 3.0, np.inf], np.float32)
    acc = ErrorAccumulator()
    acc.add(x, y)
    assert acc.nonfinite == 2 and acc.count == 2
    assert math.isclose(acc.sqnr_db, 10 * math.log10(5 / 0.25))


def test_float32_overflow_falls_back_to_float64():
    x = np.array([3e38, 1.0], np.float32)
    y = np.array([3e38, 2.0], np.float32)
    acc = ErrorAccumulator()
    acc.add(x, y)
    assert math.isfinite(acc.signal) and acc.noise == 1.0 and acc.nonfinite == 0
    assert sqnr_db(x, x) == math.inf
