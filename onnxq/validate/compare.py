"""Run an FP32 model and its quantized version on the same batches and measure the error of every output.

Optionally per layer: every tensor name that both graphs share (node outputs keep their names through Q/DQ
insertion) is exposed and compared, so the layers where the error grows stand out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxq.data import Batch, BatchSource, DataSource, model_inputs
from onnxq.errors import OnnxqError
from onnxq.graph import QDQ_OPS, load_model
from onnxq.padding_rows import ActivationReader
from onnxq.progress import stage, total_of
from onnxq.runtime import make_session, output_names, run_batch
from onnxq.validate.metrics import ErrorAccumulator


@dataclass(frozen=True)
class OutputMetrics:
    """The error of one output (or layer) of the quantized model against the FP32 one, over all batches."""

    name: str
    sqnr_db: float
    cosine: float
    mae: float
    max_abs_error: float

    @classmethod
    def of(cls, name: str, acc: ErrorAccumulator) -> OutputMetrics:
        return cls(name, acc.sqnr_db, acc.cosine, acc.mae, acc.max_err)

    def as_dict(self) -> dict:
        return {"name": self.name, "sqnr_db": _json_float(self.sqnr_db), "cosine": self.cosine,
                "mae": self.mae, "max_abs_error": self.max_abs_error}


@dataclass
class ComparisonReport:
    outputs: list[OutputMetrics]
    layers: list[OutputMetrics] = field(default_factory=list)
    batches: int = 0
    #: which rows were compared when a masked transformer's padding tokens were left out (None: every row)
    token_rows: str | None = None
    #: shared tensor names left out of ``layers`` because the float rewrites changed what they hold
    layers_left_out: int = 0

    @property
    def min_sqnr_db(self) -> float:
        return min((o.sqnr_db for o in self.outputs), default=math.inf)

    def worst_layers(self, n: int = 5) -> list[OutputMetrics]:
        return sorted(self.layers, key=lambda m: m.sqnr_db)[:n]

    def as_dict(self) -> dict:
        return {"batches": self.batches, "outputs": [o.as_dict() for o in self.outputs],
                "layers": [m.as_dict() for m in self.layers], "token_rows": self.token_rows,
                "layers_left_out": self.layers_left_out}


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _as_model(model: onnx.ModelProto | str) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else load_model(model)


def shared_layer_tensors(reference: onnx.ModelProto, quantized: onnx.ModelProto) -> list[str]:
    """Float node outputs present in both graphs (skipping Q/DQ outputs), in the reference's order."""
    quant_outputs = {o for n in quantized.graph.node if n.op_type not in QDQ_OPS for o in n.output}
    graph_outputs = {o.name for o in reference.graph.output}
    return [o for n in reference.graph.node for o in n.output
            if o and o in quant_outputs and o not in graph_outputs and n.op_type != "Constant"]


def compare_models(reference: onnx.ModelProto | str, quantized: onnx.ModelProto | str,
                   data: DataSource | Iterable[Batch] | str | os.PathLike, *, per_layer: bool = False,
                   progress: Callable[[int], None] | None = None, skip_padding: bool = True,
                   skip_layers: Collection[str] = ()) -> ComparisonReport:
    """Per-output (and optionally per-layer) SQNR, cosine, MAE and max error of ``quantized`` against ``reference``.

    ``skip_padding``: tensors with token rows of a masked transformer are compared at its real tokens only
    (:mod:`onnxq.padding_rows`): the padding rows are values nothing reads. ``skip_layers``: shared tensor names not
    to compare (:mod:`onnxq.rewritten_tensors`: names whose values a float rewrite changed)."""
    reference, quantized = _as_model(reference), _as_model(quantized)
    ref_inputs = [s.name for s in model_inputs(reference)]
    q_inputs = [s.name for s in model_inputs(quantized)]
    if sorted(ref_inputs) != sorted(q_inputs):
        raise OnnxqError(f"the models have different inputs: {ref_inputs} vs {q_inputs}")
    ref_outs = [o.name for o in reference.graph.output]
    q_outs = [o.name for o in quantized.graph.output]
    if ref_outs != q_outs:
        raise OnnxqError(f"the models have different outputs: {ref_outs} vs {q_outs}")
    if isinstance(data, (str, os.PathLike)):
        data = BatchSource(reference, data)
    shared = shared_layer_tensors(reference, quantized) if per_layer else []
    layers = [name for name in shared if name not in skip_layers]
    reader = ActivationReader(reference, ref_outs + layers, skip_padding=skip_padding)
    q_session = make_session(quantized, outputs=layers)
    names = ref_outs + layers
    q_pos = {name: i for i, name in enumerate(output_names(q_session))}
    accs = {n: ErrorAccumulator() for n in names}
    layer_set, dropped = set(layers), set()
    batches = 0
    with stage("per-layer validation" if per_layer else "validation", total=total_of(data), unit="batch") as advance:
        for batches, batch in enumerate(data, start=1):
            ref, valid = reader.read_rows(batch, f"batch {batches} (FP32 model)")
            got = run_batch(q_session, batch, f"batch {batches} (quantized model)")
            for name in names:
                if name in dropped:
                    continue
                if name in layer_set and np.shape(ref[name]) != np.shape(got[q_pos[name]]):
                    dropped.add(name)  # a rewrite changed its shape (ort-cpu pads depthwise channel groups)
                    continue
                accs[name].add(reader.select(name, ref[name], valid), reader.select(name, got[q_pos[name]], valid))
            advance()
            if progress is not None:
                progress(1)
    if batches == 0:
        raise OnnxqError("the validation data holds no batches")
    return ComparisonReport(
        outputs=[OutputMetrics.of(n, accs[n]) for n in ref_outs],
        layers=[OutputMetrics.of(n, accs[n]) for n in layers if n not in dropped],
        batches=batches,
        token_rows=reader.note("the comparison"),
        layers_left_out=len(shared) - len(layers) + len(dropped),
    )
