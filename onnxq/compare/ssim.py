"""Structural similarity (SSIM) of image-like tensors, in numpy.

Wang, Bovik, Sheikh, Simoncelli, "Image Quality Assessment: From Error Visibility to Structural Similarity",
IEEE TIP 13(4), 2004: local statistics under an 11x11 Gaussian window of sigma 1.5 (population covariances),
``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with ``L`` the data range, and the mean of the SSIM map over the positions
where the window fits (no padding). A map smaller than 11 pixels uses the largest odd window that fits.
"""

from __future__ import annotations

import numpy as np

K1, K2 = 0.01, 0.03
WINDOW, SIGMA = 11, 1.5


def gaussian_window(size: int, sigma: float = SIGMA) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return g / g.sum()


def _filter(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering over the last two axes."""
    size = g.size
    x = np.lib.stride_tricks.sliding_window_view(x, size, axis=-1) @ g
    x = np.lib.stride_tricks.sliding_window_view(x, size, axis=-2) @ g
    return x


def window_size(height: int, width: int) -> int:
    size = min(WINDOW, height, width)
    return size if size % 2 else size - 1


def ssim(reference: np.ndarray, approx: np.ndarray, data_range: float) -> float:
    """Mean SSIM over every (image, channel) map of two arrays shaped (..., H, W)."""
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(approx, dtype=np.float64)
    if x.shape != y.shape or x.ndim < 2:
        raise ValueError(f"SSIM needs two arrays of one shape (..., H, W), got {x.shape} and {y.shape}")
    size = window_size(*x.shape[-2:])
    if size < 1:
        raise ValueError(f"SSIM needs maps of at least 1x1 pixels, got {x.shape[-2:]}")
    g = gaussian_window(size)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mx, my = _filter(x, g), _filter(y, g)
    sxx = _filter(x * x, g) - mx * mx
    syy = _filter(y * y, g) - my * my
    sxy = _filter(x * y, g) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(ssim_map.mean())
