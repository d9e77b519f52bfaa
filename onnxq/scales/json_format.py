"""onnxq's own scale file: versioned JSON, lossless for everything a :class:`QuantParams` holds.

Schema (version 1)::

    {
      "format": "onnxq-scales",          # required, identifies the file
      "version": 1,                      # required; files of a newer version are refused
      "model": {"fingerprint": "..."},   # optional; onnxq.graph.fingerprint() of the model the scales belong to
      "tensors": {                       # required; tensor name -> parameters
        "input.1": {"dtype": "int8", "axis": null, "scale": 0.0123, "zero_point": 0},
        "conv1.weight": {"dtype": "int8", "axis": 0, "scale": [0.01, 0.02], "zero_point": [0, 0],
                         "role": "weight"}
      }
    }

``dtype`` is ``"int8"`` or ``"uint8"``; ``axis`` is ``null`` for per-tensor parameters (``scale`` and
``zero_point`` are numbers) or the channel axis for per-channel ones (``scale`` and ``zero_point`` are lists of
equal length). ``zero_point`` may be omitted (0). ``role`` (``"weight"`` | ``"activation"``) is optional and
informational. Scales are float32 values written as JSON numbers that read back bit-exactly. Unknown keys are
ignored, so later minor additions stay readable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from onnxq.dtypes import QUANT_DTYPES
from onnxq.errors import OnnxqError
from onnxq.scales.types import QuantParams, ScaleTable

FORMAT_NAME = "onnxq-scales"
VERSION = 1


def _number(x: Any) -> float:
    return float(np.float32(x))


def dumps(table: ScaleTable, *, fingerprint: str | None = None, param_names: Iterable[str] = (), **_: Any) -> str:
    params_set = set(param_names)
    tensors: dict[str, dict[str, Any]] = {}
    for name, p in table.items():
        if p.per_channel:
            scale: Any = [_number(s) for s in p.scale]
            zp: Any = [int(z) for z in p.zero_point]
        else:
            scale, zp = _number(p.scale), int(p.zero_point)
        entry: dict[str, Any] = {"dtype": p.dtype, "axis": p.axis, "scale": scale, "zero_point": zp}
        if params_set:
            entry["role"] = "weight" if name in params_set else "activation"
        tensors[name] = entry
    doc: dict[str, Any] = {"format": FORMAT_NAME, "version": VERSION}
    if fingerprint:
        doc["model"] = {"fingerprint": fingerprint}
    doc["tensors"] = tensors
    return json.dumps(doc, indent=2) + "\n"


def looks_like(doc: Any) -> bool:
    return isinstance(doc, Mapping) and doc.get("format") == FORMAT_NAME


def loads(text: str, *, source: str = "scales file", **_: Any) -> ScaleTable:
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise OnnxqError(f"{source} is not valid JSON: {exc}") from exc
    return from_document(doc, source=source)


def model_fingerprint(text: str) -> str | None:
    """The fingerprint recorded in an onnxq scales file, if any."""
    try:
        doc = json.loads(text)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    model = doc.get("model") if isinstance(doc, Mapping) else None
    return model.get("fingerprint") if isinstance(model, Mapping) else None


def from_document(doc: Any, *, source: str = "scales file") -> ScaleTable:
    if not looks_like(doc):
        raise OnnxqError(f'{source} is not an onnxq scales file (expected "format": "{FORMAT_NAME}")')
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise OnnxqError(f"{source}: \"version\" must be an integer, got {version!r}")
    if version > VERSION:
        raise OnnxqError(f"{source} has version {version}, written by a newer onnxq; this one reads version {VERSION}")
    tensors = doc.get("tensors")
    if not isinstance(tensors, Mapping):
        raise OnnxqError(f'{source}: "tensors" must be an object mapping tensor names to parameters')
    table: ScaleTable = {}
    for name, entry in tensors.items():
        table[name] = _entry_params(name, entry, source)
    return table


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _entry_params(name: str, entry: Any, source: str) -> QuantParams:
    where = f"{source}: tensor {name!r}"
    if not isinstance(entry, Mapping):
        raise OnnxqError(f"{where}: expected an object with dtype, axis, scale, zero_point")
    dtype = entry.get("dtype", "int8")
    if dtype not in QUANT_DTYPES:
        raise OnnxqError(f"{where}: dtype must be one of {', '.join(QUANT_DTYPES)}, got {dtype!r}")
    axis = entry.get("axis")
    if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool)):
        raise OnnxqError(f"{where}: axis must be null or an integer, got {axis!r}")
    if "scale" not in entry:
        raise OnnxqError(f"{where}: missing \"scale\"")
    scale, zp = entry["scale"], entry.get("zero_point", 0)
    per_channel = axis is not None
    if per_channel != isinstance(scale, list):
        kind = "a list (axis is set)" if per_channel else "a number (axis is null)"
        raise OnnxqError(f"{where}: scale must be {kind}")
    if per_channel and not isinstance(zp, list):
        zp = [zp] * len(scale)
    if not all(_is_number(v) for v in (scale if isinstance(scale, list) else [scale])):
        raise OnnxqError(f"{where}: scale must be numbers, got {_short(scale)}")
    if not all(_is_integer(v) for v in (zp if isinstance(zp, list) else [zp])):
        raise OnnxqError(f"{where}: zero_point must be integers, got {_short(zp)}")
    try:
        scale_arr = np.asarray(scale, dtype=np.float64)
        zp_arr = np.asarray(zp, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise OnnxqError(f"{where}: scale and zero_point must be numbers: {exc}") from exc
    if per_channel and scale_arr.ndim != 1:
        raise OnnxqError(f"{where}: per-channel scale must be a flat list of numbers")
    if scale_arr.shape != zp_arr.shape:
        raise OnnxqError(f"{where}: scale has {scale_arr.size} entries but zero_point has {zp_arr.size}")
    f32 = np.finfo(np.float32)
    out_of_range = (np.abs(scale_arr) > f32.max) | ((scale_arr > 0) & (scale_arr < f32.tiny))
    if np.any(out_of_range):
        bad = [float(s) for s in scale_arr[out_of_range].ravel()[:3]]
        raise OnnxqError(f"{where}: scales must be within float32's normal range, found {bad}")
    if not all(math.isfinite(s) and s > 0 for s in scale_arr.ravel()):
        bad = [float(s) for s in scale_arr.ravel() if not (math.isfinite(s) and s > 0)][:3]
        raise OnnxqError(f"{where}: scales must be finite and positive, found {bad}")
    lo, hi = QUANT_DTYPES[dtype].qmin, QUANT_DTYPES[dtype].qmax
    if zp_arr.size and (zp_arr.min() < lo or zp_arr.max() > hi):
        raise OnnxqError(f"{where}: zero_point out of the {dtype} range [{lo}, {hi}]")
    try:
        return QuantParams(scale_arr.astype(np.float32), zp_arr.astype(dtype), dtype, axis)
    except OnnxqError as exc:
        raise OnnxqError(f"{where}: {exc}") from exc
