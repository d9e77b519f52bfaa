"""Save and load calibration statistics (not ranges), so shards calibrated apart merge into one set of ranges.

File layout (``.npz``): ``meta`` holds a JSON document {"format": "onnxq-stats", "version": 1, "fingerprint",
"batches", "tensors": [{"name", "method", "options"}]}; the statistics of tensor ``i`` are the arrays ``t<i>/<key>``.
The fingerprint of the prepared model is checked on load, so statistics of another model are refused.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from onnxq.calib.base import CalibOptions, Calibrator
from onnxq.calib.methods import CALIBRATORS
from onnxq.errors import OnnxqError

FORMAT = "onnxq-stats"
VERSION = 1


def save_stats(path: str | os.PathLike, calibrators: dict[str, Calibrator], fingerprint: str, batches: int) -> Path:
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    tensors = []
    for i, (name, cal) in enumerate(calibrators.items()):
        tensors.append({"name": name, "method": cal.method, "options": asdict(cal.options)})
        for key, value in cal.state().items():
            arrays[f"t{i}/{key}"] = np.asarray(value)
    meta = {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "batches": batches, "tensors": tensors}
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    if path.suffix != ".npz":
        raise OnnxqError(f"statistics files end in .npz, got {path.name}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        np.savez(tmp, allow_pickle=False, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_stats(path: str | os.PathLike, fingerprint: str) -> tuple[dict[str, Calibrator], int]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(bytes(npz["meta"]).decode())
            arrays = {k: npz[k] for k in npz.files if k != "meta"}
    except (OSError, ValueError, KeyError, EOFError, json.JSONDecodeError) as exc:
        raise OnnxqError(f"{path} is not an onnxq statistics file: {exc}") from exc
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise OnnxqError(f"{path} is not an onnxq statistics file of version {VERSION}")
    if meta["fingerprint"] != fingerprint:
        raise OnnxqError(f"{path} holds statistics of another model (fingerprint {meta['fingerprint']}, this model "
                         f"{fingerprint}); calibrate the shards with the same model and settings")
    calibrators: dict[str, Calibrator] = {}
    for i, entry in enumerate(meta["tensors"]):
        cls = CALIBRATORS.get(entry["method"])
        if cls is None:
            raise OnnxqError(f"{path}: unknown calibration method {entry['method']!r}")
        state = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(f"t{i}/")}
        calibrators[entry["name"]] = cls.from_state(state, CalibOptions(**entry["options"]))
    return calibrators, int(meta["batches"])


def expand_stats_paths(patterns: list[str]) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern))
        if not matched:
            raise OnnxqError(f"no statistics files match {pattern!r}")
        paths.extend(Path(m) for m in matched)
    return paths


def merge_stats(paths: list[Path], fingerprint: str) -> tuple[dict[str, Calibrator], int]:
    """Merge any number of shards into one set of calibrators (same tensors, methods and options in each)."""
    merged: dict[str, Calibrator] = {}
    batches = 0
    for path in paths:
        calibrators, n = load_stats(path, fingerprint)
        batches += n
        merge_into(merged, calibrators, str(path))
    return merged, batches


def merge_into(merged: dict[str, Calibrator], calibrators: dict[str, Calibrator], source: str) -> None:
    """Fold one shard's calibrators into ``merged`` (empty for the first shard), exactly and in any order.

    ``source`` names the shard in the error raised when it covers other tensors than the shards before it.
    """
    if merged and calibrators.keys() != merged.keys():
        raise OnnxqError(f"{source} covers other tensors than the shards before it; calibrate every shard with "
                         "the same settings")
    for name, cal in calibrators.items():
        if name in merged:
            merged[name].merge(cal)
        else:
            merged[name] = cal
