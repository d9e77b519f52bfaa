"""Run an exported reference model in onnxruntime over a data folder and compute its task metric."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxq.errors import OnnxqError
from onnxq.models import registry
from onnxq.models.registry import get_model
from onnxq.runtime import SessionSettings, make_session


@dataclass
class EvalResult:
    name: str
    metric: str
    value: float
    higher_is_better: bool
    samples: int
    baseline: float
    baseline_is: str

    def format(self) -> str:
        better = "higher" if self.higher_is_better else "lower"
        return (
            f"{self.name}: {self.metric} = {self.value:.4f} ({better} is better) on {self.samples} samples; "
            f"baseline ({self.baseline_is}) = {self.baseline:.4f}"
        )


Sample = tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]  # (file stem, inputs, labels)


def load_data(data_dir: str | Path, *, labels: bool = True) -> Iterator[Sample]:
    """Yield ``(stem, inputs, labels)`` per ``*.npz`` batch in ``data_dir`` (labels from ``data_dir/labels``)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise OnnxqError(f"data folder {data_dir} does not exist; export one with onnxq models export NAME -o DIR")
    files = sorted(data_dir.glob("*.npz"))
    if not files:
        raise OnnxqError(f"no .npz batches in {data_dir}")
    for f in files:
        lab: dict[str, np.ndarray] = {}
        if labels:
            lf = data_dir / "labels" / f.name
            if not lf.is_file():
                raise OnnxqError(f"no labels for {f.name}: expected {lf}")
            with np.load(lf) as z:
                lab = {k: z[k] for k in z.files}
        with np.load(f) as z:
            inputs = {k: z[k] for k in z.files}
        yield f.stem, inputs, lab


def evaluate_onnx(name: str, model_path: str | Path, data_dir: str | Path) -> EvalResult:
    """The task metric of an ONNX model (FP32 or quantized) of the named reference model."""
    info = get_model(name)
    model_path = Path(model_path)
    if not model_path.is_file():
        raise OnnxqError(f"model file {model_path} does not exist")
    sess = make_session(model_path, settings=SessionSettings(optimization="all"))  # onnxruntime's default level
    in_names = [i.name for i in sess.get_inputs()]
    out_names = [o.name for o in sess.get_outputs()]
    if sorted(in_names) != sorted(info.inputs) or not set(info.outputs) <= set(out_names):
        raise OnnxqError(
            f"{model_path} does not look like the {name!r} model: inputs {in_names}, outputs {out_names}; "
            f"expected inputs {list(info.inputs)} and outputs {list(info.outputs)}"
        )
    metric = info.make_metric()
    all_labels = []
    samples = 0
    for stem, inputs, labels in load_data(data_dir):
        missing = set(info.inputs) - set(inputs)
        if missing:
            raise OnnxqError(f"batch {stem}.npz in {data_dir} lacks inputs {sorted(missing)}")
        outputs = sess.run(list(info.outputs), {k: inputs[k] for k in info.inputs})
        metric.update(dict(zip(info.outputs, outputs)), labels)
        all_labels.append(labels)
        samples += len(inputs[info.inputs[0]])
    return EvalResult(
        name, info.metric_name, float(metric.compute()), info.higher_is_better, samples,
        float(registry.baseline_metric(name, all_labels)), info.baseline,
    )
