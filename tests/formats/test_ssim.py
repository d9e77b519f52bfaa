"""SSIM against known values: identity, the closed form for constant images, and a direct per-window loop."""

from __future__ import annotations

import numpy as np
import pytest

from onnxq.compare.ssim import K1, K2, gaussian_window, ssim


def direct_ssim(x: np.ndarray, y: np.ndarray, data_range: float, size: int = 11) -> float:
    """Wang et al. (2004) computed window by window with explicit loops: an independent implementation."""
    g = gaussian_window(size)
    w = np.outer(g, g)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            a, b = x[i:i + size, j:j + size], y[i:i + size, j:j + size]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cov = (w * (a - ma) * (b - mb)).sum()
            values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_identical_images_have_ssim_one():
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16))
    assert ssim(x, x, float(x.max() - x.min())) == pytest.approx(1.0, abs=1e-12)


def test_constant_images_match_the_closed_form():
    """Constant maps a and b: the structure term is C2/C2 = 1, SSIM = (2ab + C1) / (a^2 + b^2 + C1)."""
    a, b, L = 0.6, 0.3, 1.0
    c1 = (K1 * L) ** 2
    got = ssim(np.full((1, 1, 20, 20), a), np.full((1, 1, 20, 20), b), L)
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)


def test_matches_a_direct_window_loop():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (24, 20))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    assert ssim(x[None, None], y[None, None], 1.0) == pytest.approx(direct_ssim(x, y, 1.0), rel=1e-10)
    # known ordering: more noise, lower SSIM
    z = np.clip(x + rng.normal(0, 0.3, x.shape), 0, 1)
    assert ssim(x[None, None], z[None, None], 1.0) < ssim(x[None, None], y[None, None], 1.0) < 1.0


def test_small_maps_use_a_smaller_window():
    rng = np.random.default_rng(2)
    x, y = rng.uniform(0, 1, (6, 8)), rng.uniform(0, 1, (6, 8))
    assert ssim(x[None, None], y[None, None], 1.0) == pytest.approx(direct_ssim(x, y, 1.0, size=5), rel=1e-10)
