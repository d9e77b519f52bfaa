"""Export a reference model to ONNX with its calibration and validation data.

Layout of the output folder::

    model.onnx              FP32, opset 17, dynamic batch
    calib/000.npz ...       one batch per file, keys = ONNX input names, float32
    val/000.npz ...         same, held out
    val/labels/000.npz ...  the labels of val/<same stem>.npz
"""

from __future__ import annotations

import io
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxq.atomic import write_bytes_atomic
from onnxq.errors import OnnxqError, require_at_least
from onnxq.models import registry
from onnxq.models.registry import get_model

log = logging.getLogger(__name__)

OPSET = 17


@dataclass
class ExportResult:
    name: str
    model_path: Path
    calib_dir: Path
    val_dir: Path
    labels_dir: Path


def _check_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise OnnxqError(f"output folder {path} exists and is not a folder; choose another path")


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def write_data(name: str, folder: str | Path, *, split: str, batches: int, batch_size: int, seed: int = 0,
               labels: bool) -> Path:
    """Write ``batches`` batches of the model's synthetic data to ``folder`` (and labels to ``folder/labels``).

    Stale ``*.npz`` files of an earlier export in that folder are removed so that the folder holds exactly
    this data set.
    """
    info = get_model(name)
    folder = Path(folder)
    _check_dir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    label_dir = folder / "labels"
    if labels:
        _check_dir(label_dir)
        label_dir.mkdir(exist_ok=True)
    for d in (folder, label_dir):
        if d.is_dir():
            for stale in d.glob("*.npz"):
                stale.unlink()
    rng = registry.data_rng(name, split, seed)
    width = max(3, len(str(batches - 1)))
    for i in range(batches):
        inputs, lab = info.make_batch(rng, batch_size)
        stem = f"{i:0{width}d}"
        _save_npz(folder / f"{stem}.npz", {k: inputs[k].astype(np.float32) for k in info.inputs})
        if labels:
            _save_npz(label_dir / f"{stem}.npz", lab)
    return folder


def export_onnx(name: str, path: str | Path, *, weights: str | Path | None = None, net=None) -> Path:
    """Export the (trained) torch model to ONNX (legacy TorchScript exporter, opset 17, dynamic batch)."""
    torch = registry.import_torch()
    info = get_model(name)
    net = net if net is not None else registry.load_network(name, weights)
    inputs, _ = info.make_batch(registry.data_rng(name, "test", 0), 2)
    args = tuple(torch.from_numpy(inputs[k]) for k in info.inputs)
    path = Path(path)
    buf = io.BytesIO()
    dynamic = {n: {0: "batch"} for n in (*info.inputs, *info.outputs)}
    with torch.no_grad():
        torch.onnx.export(
            net, args, buf, dynamo=False, opset_version=OPSET, input_names=list(info.inputs),
            output_names=list(info.outputs), dynamic_axes=dynamic, do_constant_folding=True,
        )
    write_bytes_atomic(path, buf.getvalue())
    return path


def export_model(
    name: str,
    output_dir: str | Path,
    *,
    calib_batches: int = 16,
    calib_batch_size: int = 8,
    val_batches: int = 16,
    val_batch_size: int = 16,
    seed: int = 0,
    weights: str | Path | None = None,
) -> ExportResult:
    """Write ``model.onnx``, ``calib/``, ``val/`` and ``val/labels/`` for the named model into ``output_dir``."""
    get_model(name)
    out = Path(output_dir)
    _check_dir(out)
    registry.import_torch()
    for n, v in (("calib_batches", calib_batches), ("calib_batch_size", calib_batch_size),
                 ("val_batches", val_batches), ("val_batch_size", val_batch_size)):
        require_at_least(n, v, 1)
    net = registry.load_network(name, weights)  # bad weights fail before any folder is created
    out.mkdir(parents=True, exist_ok=True)
    model_path = export_onnx(name, out / "model.onnx", net=net)
    log.info("exported %s to %s", name, model_path)
    calib = write_data(name, out / "calib", split="calib", batches=calib_batches, batch_size=calib_batch_size,
                       seed=seed, labels=False)
    val = write_data(name, out / "val", split="val", batches=val_batches, batch_size=val_batch_size, seed=seed,
                     labels=True)
    stale_labels = calib / "labels"
    if stale_labels.is_dir():
        shutil.rmtree(stale_labels)
    return ExportResult(name, model_path, calib, val, val / "labels")
