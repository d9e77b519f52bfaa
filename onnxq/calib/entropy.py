"""Entropy calibration: TensorRT's ``EntropyCalibration2`` threshold search (minimum KL divergence).

The algorithm, as NVIDIA describes it publicly (our own implementation):

* Szymon Migacz, "8-bit Inference with TensorRT", GTC 2017 (s7310), slide "Entropy Calibration - pseudocode":
  a 2048-bin histogram of ``|x|``; for every ``i`` in ``128 .. 2048`` the reference distribution ``P`` is
  ``bins[0:i]`` with all outliers ``sum(bins[i:])`` added to ``P[i-1]``; the candidate ``Q`` is ``bins[0:i]``
  merged into 128 levels and expanded back to ``i`` bins; ``threshold`` minimises ``KL(P || Q)``.
* NVIDIA/TensorRT ``tools/pytorch-quantization/pytorch_quantization/calib/histogram.py``,
  ``_compute_amax_entropy`` (num_bits=8, unsigned=False, stride=1, start_bin=128) -- NVIDIA's open reference,
  whose details we follow where the slide is silent:
  - ``bins[0] = bins[1]`` first (the spike of exact zeros after ReLU must not dominate the divergence);
  - bin ``j < i`` falls into level ``floor(128 * j / i)`` (``np.digitize`` on ``linspace(0, i, 129)``);
  - expanding a level spreads its count evenly over the level's *non-empty* bins; empty bins stay 0 in ``Q``;
  - ``KL`` as ``scipy.stats.entropy(P, Q)``: both normalised, ``+inf`` where ``P > 0 = Q`` (happens when the
    outliers land on an empty bin ``i - 1``);
  - ``i`` runs over ``128 .. 2048`` inclusive, ties go to the largest ``i``, ``amax = i * bin_width``
    (the slide's ``(m + 0.5) * width`` differs by half a bin).
* onnxruntime ``onnxruntime/python/tools/quantization/calibrate.py``, ``HistogramCollector.get_entropy_threshold``:
  the same search over a histogram of signed values (window growing around the zero bin), thresholds then clipped
  to the observed min and max -- which is what we do for an asymmetric range.
* TensorRT developer guide, "INT8 Calibration": ``EntropyCalibration2`` is the recommended calibrator and needs
  per-tensor symmetric scales only.

The search histogram is ``num_bins`` (2048) bins over ``[0, max|x|]`` resampled from the streaming histogram
(:func:`onnxq.calib.histogram.resample_abs`, 4-8 fine bins per search bin). The divergence of every candidate is
computed at once from prefix sums, ``O(num_bins * 128)`` work instead of the reference's ``O(num_bins**2)``.

Asymmetric ranges: ``(max(min, -amax), min(max, amax))`` with the symmetric ``amax`` (as onnxruntime).
"""

from __future__ import annotations

import numpy as np

from onnxq.calib.histogram import HistogramCalibrator, StreamingHistogram, resample_abs


def kl_divergences(hist: np.ndarray, levels: int = 128, start: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """KL(P_i || Q_i) for every candidate threshold bin ``i`` in ``start .. len(hist)`` (``start`` = ``levels``).

    Returns ``(candidates, divergences)``; ``+inf`` where ``Q_i`` misses mass that ``P_i`` has.
    """
    h = np.array(hist, dtype=np.float64)
    n = h.size
    start = levels if start is None else start
    h[0] = h[1]
    total = h.sum()
    candidates = np.arange(start, n + 1)
    if total <= 0:
        return candidates, np.zeros(candidates.size)

    nonzero = h > 0
    cum = np.concatenate([[0.0], np.cumsum(h)])  # cum[k] = sum(h[:k])
    cum_nonzero = np.concatenate([[0], np.cumsum(nonzero)])
    hlogh = np.zeros(n)
    hlogh[nonzero] = h[nonzero] * np.log(h[nonzero])
    cum_hlogh = np.concatenate([[0.0], np.cumsum(hlogh)])

    # Level g of candidate i holds the bins j with floor(levels * j / i) == g,
    # i.e. ceil(g * i / levels) <= j < ceil((g + 1) * i / levels).
    g = np.arange(levels + 1)
    bounds = (g[None, :] * candidates[:, None] + levels - 1) // levels
    level_sum = cum[bounds[:, 1:]] - cum[bounds[:, :-1]]
    level_nonzero = cum_nonzero[bounds[:, 1:]] - cum_nonzero[bounds[:, :-1]]

    inside = cum[candidates]  # sum(h[:i]) = total of the unnormalised Q
    tail = total - inside  # outliers, added to P[i-1]
    last = h[candidates - 1]
    p_last = last + tail

    # sum_j P_j log P_j: bins below i-1 from the prefix sum, bin i-1 with its outliers.
    with np.errstate(divide="ignore", invalid="ignore"):
        p_log_p = cum_hlogh[candidates - 1] + np.where(p_last > 0, p_last * np.log(p_last), 0.0)
        # sum_j P_j log Q_j (Q unnormalised: level_sum / level_nonzero on non-empty bins). Bins below i-1 add up to
        # level_sum * log(level value); the outliers in bin i-1 take the last level's value.
        level_log = np.where(level_sum > 0, np.log(level_sum / np.maximum(level_nonzero, 1)), 0.0)
        p_log_q = (level_sum * level_log).sum(axis=1) + tail * level_log[:, -1]
        # KL = sum p log(p / q) with p = P / total, q = Q / inside.
        divergence = (p_log_p - p_log_q) / total + np.log(inside / total)
    divergence = np.where((tail > 0) & (last == 0), np.inf, divergence)
    return candidates, divergence


def entropy_threshold_bin(hist: np.ndarray, levels: int = 128) -> int:
    """The threshold bin ``i`` minimising KL divergence (ties: the largest ``i``); ``amax = i * bin_width``."""
    candidates, divergence = kl_divergences(hist, levels)
    best = divergence.size - 1 - int(np.argmin(divergence[::-1]))
    return int(candidates[best])


class EntropyCalibrator(HistogramCalibrator):
    method = "entropy"

    def range_from(self, hist: StreamingHistogram, symmetric: bool) -> tuple[float, float]:
        num_bins = self.options.num_bins
        levels = 1 << (self.options.num_bits - 1)
        search = resample_abs(hist, num_bins)
        i = entropy_threshold_bin(search, levels)
        amax = hist.amax if i == num_bins else i * (hist.amax / num_bins)
        if symmetric:
            return -amax, amax
        return max(hist.lo, -amax), min(hist.hi, amax)
