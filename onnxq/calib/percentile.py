"""Percentile calibration: clip the rarest ``100 - p`` percent of values.

Symmetric: ``amax`` is the ``p``-th percentile of ``|x|`` (as pytorch-quantization's ``percentile`` method and
onnxruntime's symmetric ``Percentile`` calibrater). Asymmetric: each tail loses half of ``100 - p`` percent, i.e.
``lo, hi`` are the ``(100 - p) / 2`` and ``100 - (100 - p) / 2`` percentiles of ``x`` (as onnxruntime's asymmetric
``Percentile``). Read from the streaming histogram with linear interpolation inside a fine bin, so the result is
within one fine bin (``max|x| / 8192`` or finer for the default 2048 bins) of the exact sample percentile, and
never outside the observed ``[min, max]``. ``p = 100`` gives exactly the min-max range.
"""

from __future__ import annotations

from onnxq.calib.histogram import HistogramCalibrator, StreamingHistogram


class PercentileCalibrator(HistogramCalibrator):
    method = "percentile"

    def range_from(self, hist: StreamingHistogram, symmetric: bool) -> tuple[float, float]:
        p = self.options.percentile / 100.0
        if symmetric:
            amax = hist.abs_quantile(p)
            return -amax, amax
        cut = (1.0 - p) / 2.0
        return hist.signed_quantile(cut), hist.signed_quantile(1.0 - cut)
