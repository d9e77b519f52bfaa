"""Save and load calibration statistics (not ranges), so shards calibrated apart merge into one set of ranges.

File layout (``.npz``): ``meta`` holds a JSON document {"format": "onnxq-stats", "version": 1, "fingerprint",
"batches", "tensors": [{"name", "method", "options"}]}; the statistics of tensor ``i`` are the arrays ``t<i>/<key>``.
The fingerprint of the prepared model is checked on load, so statistics of another model are refused.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from onnxq.atomic import AtomicGroup
from onnxq.calib.base import CalibOptions, Calibrator
from onnxq.calib.histogram import HistogramCalibrator, fine_bins
from onnxq.calib.methods import CALIBRATORS
from onnxq.calib.minmax import MinMaxCalibrator
from onnxq.errors import OnnxqError
from onnxq.graph import printable
from onnxq.safe_read import NpzArchive

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
    with AtomicGroup() as group:
        group.write_with(path, lambda tmp: np.savez(tmp, allow_pickle=False, **arrays), suffix=".npz")
    return path


MAX_META_BYTES = 64 * 1024**2


def load_stats(path: str | os.PathLike, fingerprint: str) -> tuple[dict[str, Calibrator], int]:
    """Statistics of one shard, every part checked: array headers before their data, the metadata's types and
    shape, every number finite (a NaN would silently become a scale of 1.0), each state accepted by its
    calibrator."""
    path = Path(path)
    with NpzArchive(path) as npz:
        if "meta" not in npz:
            raise OnnxqError(f"{path} is not an onnxq statistics file (no meta entry)")
        shape, dtype = npz.header("meta")
        if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_META_BYTES:
            raise OnnxqError(f"{path}: the meta entry is not JSON bytes (dtype {dtype}, shape {shape})")
        try:
            meta = json.loads(bytes(npz["meta"]).decode())
        except (ValueError, RecursionError) as exc:
            raise OnnxqError(f"{path}: the meta entry is not valid JSON: {str(exc)[:200]}") from exc
        _check_meta(meta, path)
        arrays = {k: npz[k] for k in npz.files if k != "meta"}
    if meta["fingerprint"] != fingerprint:
        raise OnnxqError(f"{path} holds statistics of another model (fingerprint {printable(meta['fingerprint'])}, "
                         f"this model {fingerprint}); calibrate the shards with the same model and settings")
    for key, value in arrays.items():
        _check_array(path, key, value)
    calibrators: dict[str, Calibrator] = {}
    for i, entry in enumerate(meta["tensors"]):
        name = printable(entry["name"])
        cls = CALIBRATORS.get(entry["method"])
        if cls is None:
            raise OnnxqError(f"{path}: unknown calibration method {printable(str(entry['method']))!r}")
        state = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(f"t{i}/")}
        try:
            options = CalibOptions(**entry["options"])
            calibrators[entry["name"]] = cls.from_state(state, options)
        except OnnxqError as exc:
            raise OnnxqError(f"{path}: tensor {name!r}: {exc}") from exc
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
            raise OnnxqError(f"{path}: tensor {name!r} has malformed statistics ({type(exc).__name__}: "
                             f"{str(exc)[:100]}); calibrate again") from exc
    return calibrators, meta["batches"]


def _check_meta(meta, path: Path) -> None:
    """Types and shape of the metadata document (see the module docstring)."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise OnnxqError(f"{path} is not an onnxq statistics file of version {VERSION}")
    if not isinstance(meta.get("fingerprint"), str):
        raise OnnxqError(f"{path}: \"fingerprint\" must be a string")
    batches = meta.get("batches")
    if not isinstance(batches, int) or isinstance(batches, bool) or batches < 0:
        raise OnnxqError(f"{path}: \"batches\" must be a non-negative integer, got {str(batches)[:40]!r}")
    tensors = meta.get("tensors")
    if not isinstance(tensors, list):
        raise OnnxqError(f"{path}: \"tensors\" must be a list")
    for i, entry in enumerate(tensors):
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("method"), str)
                and isinstance(entry.get("options"), dict)):
            raise OnnxqError(f"{path}: tensors[{i}] must be an object with a string name and method and an options "
                             "object")


def _check_array(path: Path, key: str, value: np.ndarray) -> None:
    if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
        raise OnnxqError(f"{path}: {key} has dtype {value.dtype}, not numbers")
    if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
        if key.endswith(("/lo", "/hi")) and value.ndim == 0 and np.isinf(value):
            return  # +inf / -inf: the "no values seen" start of a min/max, checked by its calibrator
        raise OnnxqError(f"{path}: {key} holds NaN or Inf; the statistics are corrupt, calibrate again")
    if np.issubdtype(value.dtype, np.floating) and value.size and key.endswith(("/lo", "/hi")) and \
            np.isfinite(value).all() and np.abs(value).max() > np.finfo(np.float32).max:
        raise OnnxqError(f"{path}: {key} is outside float32's range; the statistics are corrupt, calibrate again")


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


def rechoose_methods(calibrators: dict[str, Calibrator], wanted: dict[str, CalibOptions],
                     source: str = "the statistics") -> dict[str, Calibrator]:
    """The merged statistics re-read with the method and options each tensor asks for now (``quantize --stats
    --method ...``): choosing the method after calibrating once.

    What statistics can give: a histogram (collected for ``percentile``, ``entropy`` or ``mse``) holds everything any
    histogram method reads, so it yields any of them with any ``percentile``, as long as ``num_bins`` (which fixes
    the histogram's layout) is the one it was collected with; its exact min and max also give ``minmax`` (without a
    moving average). Min/max statistics give min/max only. Anything else is refused with the flag to change.
    """
    chosen: dict[str, Calibrator] = {}
    for name, cal in calibrators.items():
        want = wanted.get(name)
        if want is None or (want.method == cal.method and want == cal.options) or (
                isinstance(cal, MinMaxCalibrator) and want.method == cal.method
                and want.momentum == cal.options.momentum):  # the histogram options do not touch min/max
            chosen[name] = cal
            continue
        cls = CALIBRATORS.get(want.method)
        if isinstance(cal, HistogramCalibrator) and cls is not None and issubclass(cls, HistogramCalibrator):
            if fine_bins(want.num_bins) != fine_bins(cal.options.num_bins):
                raise OnnxqError(f"{source} hold {cal.options.num_bins}-bin histograms ({name!r}); "
                                 f"--num-bins {want.num_bins} needs new statistics: pass --num-bins "
                                 f"{cal.options.num_bins} or recalibrate")
            chosen[name] = cls.from_state(cal.state(), want)
        elif isinstance(cal, HistogramCalibrator) and cls is MinMaxCalibrator and want.momentum is None:
            hist = cal.hist
            seen = hist.lo <= hist.hi
            chosen[name] = MinMaxCalibrator.from_state(
                {"lo": np.array(hist.lo), "hi": np.array(hist.hi), "batches": np.array(1 if seen else 0)}, want)
        else:
            raise OnnxqError(
                f"{source} hold {cal.method} statistics ({name!r}), which cannot give {want.method}"
                + (" with a moving average" if want.method == "minmax" else "")
                + f" ranges; drop the calibration flags to use {cal.method}, or calibrate with a histogram method "
                "(percentile, entropy or mse: any of them gives every histogram method at merge time)")
    return chosen
