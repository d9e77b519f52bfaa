"""``auto``: the streaming histogram of :mod:`onnxq.calib.histogram`, from which the quantize pipeline's
``select-ranges`` stage (:mod:`onnxq.recovery.method_select`) picks, per activation, the candidate range (min-max,
percentile, entropy or MSE, all read off this one histogram) that minimises the error of the CONSUMING layer's
output. Used alone (``onnxq calibrate`` statistics, or a tensor no weighted layer consumes) its range is the MSE
range.
"""

from __future__ import annotations

from onnxq.calib.mse import MseCalibrator


class AutoCalibrator(MseCalibrator):
    method = "auto"
