"""Replay recorded float rewrites (equalization, SmoothQuant, activation shifts, corrected biases) on a float
model, bit-exactly.

``onnxq quantize ORIGINAL.onnx --scales scales.json``: a version-3 onnxq scales file records the channel rescalings
the calibrated run made before its ranges were taken (:mod:`onnxq.scales.rewrites`). They are applied here, before
the plan, through the same function the calibrated run used (:func:`onnxq.recovery.channel_scale.apply_rewrite`),
so the prepared model, and with the file's scales the quantized model, are the calibrated run's bit for bit. Corrected
biases are written by bias correction's own writer (:func:`onnxq.recovery.bias_correction.write_biases`), all at
once and after the channel rewrites, as the calibrated run did. The
float weights' digest is checked before (the file was written for these weights; a warning, an error with
``--strict``) and after (the replay reproduced the calibrated run's weights). A model that already holds the
rewritten weights (the equalized float model ``export-scales`` writes beside a TensorRT cache) is left as it is.
"""

from __future__ import annotations

import logging

import onnx

from onnxq.errors import OnnxqError
from onnxq.graph import node_name
from onnxq.recovery.channel_scale import apply_rewrite, drop_unused_initializers
from onnxq.scales.rewrites import (
    BiasRewrite,
    ChannelRewrite,
    FloatRewrites,
    ShiftRewrite,
    record_in_model,
    weights_digest,
)

log = logging.getLogger(__name__)


def replay_rewrites(model: onnx.ModelProto, record: FloatRewrites, *, source: str, strict: bool = False) -> str:
    """Apply ``record`` to ``model`` in place (unless its weights are already the rewritten ones); returns a note."""
    found = weights_digest(model)
    if found == record.weights_after:
        return f"float rewrites of {source} ({record.summary()}): already in this model's weights, not replayed"
    if found != record.weights_before:
        message = (f"{source} records float rewrites made on other float weights than this model's; they are "
                   "replayed by node name, the result is exact in float but not the calibrated run's model")
        if strict:
            raise OnnxqError(message)
        log.warning("%s", message)
    for rewrite in record.rewrites:
        if isinstance(rewrite, ChannelRewrite):
            apply_rewrite(model, rewrite)
        elif isinstance(rewrite, ShiftRewrite):
            from onnxq.recovery.activation_shift import apply_shift

            apply_shift(model, rewrite)
    drop_unused_initializers(model)
    biases = {r.node: r.bias for r in record.rewrites if isinstance(r, BiasRewrite)}
    if biases:
        from onnxq.recovery.bias_correction import write_biases

        missing = sorted(set(biases) - {node_name(n) for n in model.graph.node})
        if missing:
            raise OnnxqError(f"{source} records corrected biases of {missing[0]!r}, which this model does not have; "
                             "the rewrites were recorded on another model")
        write_biases(model, biases)
    after = weights_digest(model)
    if found == record.weights_before and after != record.weights_after:
        raise OnnxqError(f"replaying the float rewrites of {source} gave other weights than the calibrated run's; "
                         "quantize with the onnxq version (and onnx) that wrote the file")
    record_in_model(model, record if after == record.weights_after else FloatRewrites(record.rewrites, found, after))
    return f"float rewrites replayed from {source}: {record.summary()} (the scales belong to the rewritten model)"
