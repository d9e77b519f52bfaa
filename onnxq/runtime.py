"""onnxruntime sessions for onnxq: one way to build a session over any model, run a batch, expose tensors.

Every caller (calibration, verification after Q/DQ insertion, validation, QAT checks, import-qdq) builds its
session with :func:`make_session`, so session options, providers and error messages are the same everywhere.

A model is given either as an ``onnx.ModelProto`` or as a path. A path without extra outputs goes to onnxruntime
as it is (onnxruntime reads the file and its external data itself, nothing is copied); a ModelProto is serialized
once. Extra outputs (intermediate tensors to expose) are appended to the *serialized* model without copying the
ModelProto: protobuf merges a message parsed from concatenated encodings, and repeated fields (``graph.output``)
are concatenated ("Merging" in https://protobuf.dev/programming-guides/encoding/#last-one-wins), so
``model bytes + ModelProto(graph=GraphProto(output=[...])) bytes`` is the model with those outputs added.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxq.data import Batch
from onnxq.errors import OnnxqError
from onnxq.graph import load_model, model_files, model_on_disk, needs_external_data, printable

#: What a session can be built from: the model itself or the path of an ``.onnx`` file.
ModelSource = onnx.ModelProto | str | os.PathLike


@dataclass(frozen=True)
class SessionSettings:
    """Typed onnxruntime session settings shared by every caller."""

    #: intra-op threads; 0 keeps onnxruntime's default (one per physical core)
    threads: int = 0
    #: graph optimisation: "basic" keeps Q/DQ arithmetic as the reference (no QLinear fusion), "all" is fastest
    optimization: str = "basic"
    #: also write the graph onnxruntime runs after its optimisations here (``optimized_model_filepath``)
    optimized_model_path: str | None = None
    #: let idle intra-op threads spin-wait for work (onnxruntime's default); off when several sessions take turns
    #: in one process, where one session's spinning threads steal the cores the other one runs on
    allow_spinning: bool = True

    def to_ort(self) -> ort.SessionOptions:
        """These settings as onnxruntime SessionOptions."""
        levels = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        if self.optimization not in levels:
            raise OnnxqError(f"unknown onnxruntime optimization level {self.optimization!r}; choose one of "
                             f"{', '.join(levels)}")
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[self.optimization]
        # 4 = fatal only: onnxruntime would otherwise print its own coloured error line before onnxq's one line
        options.log_severity_level = 4
        if self.threads:
            options.intra_op_num_threads = self.threads
        if self.optimized_model_path is not None:
            options.optimized_model_filepath = self.optimized_model_path
        if not self.allow_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options


def session_options(threads: int = 0) -> ort.SessionOptions:
    """onnxq's default session options (basic optimisations, warnings off) with ``threads`` intra-op threads."""
    return SessionSettings(threads=threads).to_ort()


def make_session(model: ModelSource, *, outputs: Iterable[str] = (), threads: int = 0,
                 settings: SessionSettings | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session over ``model`` whose outputs are the graph outputs followed by ``outputs``
    (intermediate tensors to expose; names already among the graph outputs are not repeated)."""
    settings = settings or SessionSettings(threads=threads)
    ort.set_default_logger_severity(4)  # errors are reported once, by onnxq, as one line
    try:
        with _session_source(model, list(outputs)) as source:
            options = settings.to_ort()
            if isinstance(source, str) and _is_large(model):
                # pre-packed GEMM weights are a second copy of every MatMul weight, held at session creation
                # (measured: 0.84 GB peak vs 0.58 GB for 0.54 GB of MatMul weights)
                options.add_session_config_entry("session.disable_prepacking", "1")
            return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except OnnxqError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types for invalid models
        what = "the model" if isinstance(model, onnx.ModelProto) else str(model)
        raise OnnxqError(f"onnxruntime cannot load {what}: {first_line(exc)}") from exc


def run_batch(session: ort.InferenceSession, batch: Batch, label: str) -> list[np.ndarray]:
    """All outputs of ``session`` on one batch; an onnxruntime failure is an OnnxqError naming ``label``."""
    try:
        return session.run(None, batch)
    except Exception as exc:
        raise OnnxqError(f"onnxruntime failed on {label}: {first_line(exc)}") from exc


def run_named(session: ort.InferenceSession, batch: Batch, label: str) -> dict[str, np.ndarray]:
    """:func:`run_batch` keyed by output name."""
    return dict(zip(output_names(session), run_batch(session, batch, label)))


def output_names(session: ort.InferenceSession) -> list[str]:
    """The session's output names, in the order :func:`run_batch` returns the arrays."""
    return [o.name for o in session.get_outputs()]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, control characters escaped (it may quote names from a model)."""
    text = str(exc).strip()
    return printable(text.splitlines()[0]) if text else type(exc).__name__


def _is_large(model: ModelSource) -> bool:
    if isinstance(model, onnx.ModelProto):
        return needs_external_data(model)
    try:
        return sum(f.stat().st_size for f in model_files(model)) > EXTERNAL_DATA_THRESHOLD_FOR_PREPACK
    except OSError:
        return False


EXTERNAL_DATA_THRESHOLD_FOR_PREPACK = 1024**3


@contextlib.contextmanager
def _session_source(model: ModelSource, outputs: Sequence[str]) -> Iterator[str | bytes]:
    """Bytes for onnxruntime, or for a model past the protobuf limit a temporary .onnx with external data (4 KB
    aligned, so onnxruntime can map it), written tensor by tensor without serializing or copying the model and
    removed once the session is built."""
    if not isinstance(model, onnx.ModelProto):
        if not outputs:
            yield str(Path(model))
            return
        model = load_model(model)
    present = {o.name for o in model.graph.output}
    extra = [name for name in dict.fromkeys(outputs) if name not in present]
    if needs_external_data(model):
        with model_on_disk(model, extra_outputs=extra) as path:
            yield path
        return
    data = model.SerializeToString()
    if extra:
        data += onnx.ModelProto(graph=onnx.GraphProto(output=[onnx.ValueInfoProto(name=n) for n in extra]))\
            .SerializeToString()
    yield data
