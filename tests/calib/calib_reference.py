"""Straightforward (slow) reference implementations the calibrators are checked against.

Written from the algorithm descriptions, independently of the library code: loops and raw samples, no prefix sums.
"""

from __future__ import annotations

import numpy as np


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) of unnormalised distributions, as scipy.stats.entropy(p, q)."""
    if q.sum() == 0 or np.any((p > 0) & (q == 0)):
        return np.inf
    p, q = p / p.sum(), q / q.sum()
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def entropy_reference_bin(hist: np.ndarray, levels: int = 128) -> int:
    """TensorRT entropy calibration on a histogram of |x| (NVIDIA pytorch-quantization's reading of it)."""
    bins = np.array(hist, dtype=np.float64)
    bins[0] = bins[1]
    n = bins.size
    divergences = []
    for i in range(levels, n + 1):
        reference = bins[:i].copy()
        reference[i - 1] += bins[i:].sum()
        level_of = np.digitize(np.arange(i), np.linspace(0, i, levels + 1)) - 1
        nonzero = bins[:i] != 0
        level_total = np.bincount(level_of, weights=bins[:i], minlength=levels)
        level_members = np.bincount(level_of[nonzero], minlength=levels)
        candidate = np.where(nonzero, level_total[level_of] / np.maximum(level_members[level_of], 1), 0.0)
        divergences.append(_kl(reference, candidate))
    divergences = np.array(divergences)
    best = len(divergences) - 1 - int(np.argmin(divergences[::-1]))
    return levels + best


def fake_quant_symmetric(x: np.ndarray, amax: float, qmax: int = 127) -> np.ndarray:
    scale = amax / qmax
    return np.clip(np.rint(x / scale), -qmax, qmax) * scale


def fake_quant_asymmetric(x: np.ndarray, lo: float, hi: float, levels: int = 255) -> np.ndarray:
    scale = (hi - lo) / levels
    zero_point = np.clip(np.rint(-lo / scale), 0, levels)
    return (np.clip(np.rint(x / scale) + zero_point, 0, levels) - zero_point) * scale


def mse_reference_symmetric(x: np.ndarray, num_bins: int = 2048) -> tuple[float, float]:
    """Best amax among k * max|x| / num_bins by fake-quantizing the samples themselves; returns (amax, step)."""
    x = x.astype(np.float64)
    amax = np.abs(x).max()
    step = amax / num_bins
    errors = [np.mean((fake_quant_symmetric(x, k * step) - x) ** 2) for k in range(1, num_bins + 1)]
    return (int(np.argmin(errors)) + 1) * step, step


def mse_reference_asymmetric(x: np.ndarray, num_bins: int = 2048) -> tuple[float, float, float]:
    """Best alpha * (min(x, 0), max(x, 0)) by fake-quantizing the samples; returns (lo, hi, alpha step)."""
    x = x.astype(np.float64)
    lo0, hi0 = min(x.min(), 0.0), max(x.max(), 0.0)
    errors = [
        np.mean((fake_quant_asymmetric(x, k / num_bins * lo0, k / num_bins * hi0) - x) ** 2)
        for k in range(1, num_bins + 1)
    ]
    alpha = (int(np.argmin(errors)) + 1) / num_bins
    return alpha * lo0, alpha * hi0, 1.0 / num_bins


def random_samples(n: int = 400_000, seed: int = 0) -> dict[str, np.ndarray]:
    """The test distributions as random float32 samples."""
    rng = np.random.default_rng(seed)
    gauss = rng.standard_normal(n)
    outliers = rng.standard_normal(n)
    outliers[rng.choice(n, 12, replace=False)] = rng.choice([-1, 1], 12) * rng.uniform(15, 40, 12)
    return {
        "gaussian": gauss.astype(np.float32),
        "laplace": rng.laplace(size=n).astype(np.float32),
        "gaussian+outliers": outliers.astype(np.float32),
        "relu": np.maximum(rng.standard_normal(n) * 2 + 0.3, 0).astype(np.float32),
    }


def stratified_samples(n: int = 100_000, seed: int = 0) -> dict[str, np.ndarray]:
    """The test distributions as evenly spread quantiles (shuffled): smooth error curves, no sampling noise."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    u = (np.arange(n) + 0.5) / n
    out = {
        "gaussian": stats.norm.ppf(u),
        "laplace": stats.laplace.ppf(u),
        "gaussian+outliers": np.concatenate([stats.norm.ppf(u), [25.0, -31.0, 40.0, 28.5, -22.0]]),
        "relu": np.maximum(stats.norm.ppf(u) * 2 + 0.3, 0),
    }
    return {k: rng.permutation(v).astype(np.float32) for k, v in out.items()}
