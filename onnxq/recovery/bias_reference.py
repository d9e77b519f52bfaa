"""Bias correction's FP32 reference, computed in the calibration pass instead of a float pass of its own.

Bias correction (:mod:`onnxq.recovery.bias_correction`) matches each corrected layer's per-channel output mean on the
first few calibration batches to the FP32 model's. The FP32 means need a float pass over those batches, and the
calibration pass already runs that very model on them: the per-channel sums of the corrected layers' outputs are
appended to its model as nodes (:class:`onnxq.calib.collect.SideOutputs`), and their values on the first batches
kept. Saved: one float pass and its session (measured per model in docs/accuracy_recovery.md).

The values stand for bias correction's own pass only when nothing changed in between, which is checked, not assumed:

* the same layers are corrected (the plan may lose nodes to mixed precision in between);
* the same batches: each kept batch's inputs are hashed when the calibration pass reads them and again when bias
  correction takes its batches (a re-iterable that yields other batches the second time is caught);
* the same float weights: the caller does not pass the reference after GPTQ or AdaRound re-rounded them.

Otherwise bias correction runs its own float pass, as it always did.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx

from onnxq.calib.collect import SideOutputs
from onnxq.data import Batch
from onnxq.graph import all_names
from onnxq.plan import QuantPlan
from onnxq.recovery.bias_correction import (
    ChannelStats,
    ChannelSums,
    Target,
    batch_samples,
    channel_sum_nodes,
    correction_targets,
)


def batch_digest(batch: Batch) -> str:
    """A hash of a batch's input names, dtypes, shapes and values."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(batch):
        value = np.ascontiguousarray(batch[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}".encode())
        digest.update(value.reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


class CalibratedReference:
    """The FP32 channel sums of bias correction's layers on the batches it will take (the first ``batches``, no
    more once they hold ``samples`` samples), collected by the calibration pass through :attr:`side`."""

    def __init__(self, prepared: onnx.ModelProto, plan: QuantPlan, batches: int, samples: int | None) -> None:
        self.targets, _, _ = correction_targets(prepared, plan)
        self.batches, self.samples = batches, samples
        self.digests: list[str] = []
        self.held = 0
        nodes, initializers, outputs = channel_sum_nodes(self.targets, all_names(prepared.graph))
        self.side = SideOutputs(onnx.GraphProto(node=nodes, initializer=initializers, output=outputs), self._take)

    def _take(self, batch: Batch) -> bool:
        """Whether bias correction will take ``batch`` (as :func:`~onnxq.recovery.bias_correction.first_batches`
        does); records its digest."""
        if len(self.digests) >= self.batches or (self.samples is not None and self.held >= self.samples):
            return False
        self.digests.append(batch_digest(batch))
        self.held += batch_samples(batch)
        return True

    def stats(self, targets: list[Target], kept: list[Batch]) -> dict[str, ChannelStats] | None:
        """The FP32 channel means of ``targets`` on ``kept``, or None when the calibration pass did not compute
        exactly those (other layers, other batches, or no values at all)."""
        same_layers = [(t.node, t.output, t.channels) for t in targets] == [
            (t.node, t.output, t.channels) for t in self.targets]
        if not targets or not same_layers or len(self.side.values) != len(kept):
            return None
        if [batch_digest(batch) for batch in kept] != self.digests:
            return None
        sums = ChannelSums(targets)
        for values in self.side.values:
            sums.add(values)
        return sums.stats()
