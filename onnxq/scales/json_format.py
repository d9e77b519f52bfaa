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

``dtype`` is ``"int8"`` or ``"uint8"`` (version 1) or, from version 2, any type of
:data:`onnxq.dtypes.QUANT_DTYPES` (``"int4"``, ``"uint4"``, ``"float8e4m3fn"``; float8 zero points are numbers);
``axis`` is ``null`` for per-tensor parameters (``scale`` and ``zero_point`` are numbers) or the channel axis for
per-channel ones (``scale`` and ``zero_point`` are lists of equal length). Version 2 adds ``block_size`` for
block-wise parameters: ``scale`` and ``zero_point`` are then nested lists of the weight's rank, the ``axis``
dimension divided by ``block_size`` (rounded up). A file holding only int8/uint8 per-tensor/per-channel entries is
still written as version 1, so older readers keep reading it. ``zero_point`` may be omitted (0). ``role``
(``"weight"`` | ``"activation"``) is optional and informational. Scales are float32 values written as JSON numbers
that read back bit-exactly. Unknown keys are ignored, so later minor additions stay readable.

Version 3 adds ``"float_rewrites"``: the channel rescalings (cross-layer / depthwise equalization, SmoothQuant) the
quantization made to the float model before its ranges were taken, with the float weights' digest before and after
(schema in :mod:`onnxq.scales.rewrites`). ``quantize --scales`` replays them on the original float model before
inserting Q/DQ, so the result is the calibrated run's model bit for bit. Only a file that records rewrites is
written as version 3: an older onnxq refuses it (it cannot replay them) instead of applying the scales to a graph
they do not fit. Versions 1 and 2 are still read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from onnxq.dtypes import QUANT_DTYPES, quant_dtype
from onnxq.errors import OnnxqError
from onnxq.scales import rewrites as rewrites_format
from onnxq.scales.rewrites import FloatRewrites
from onnxq.scales.types import QuantParams, ScaleTable

FORMAT_NAME = "onnxq-scales"
VERSION = 3
#: the newest version a file without float rewrites needs (dtypes beyond int8/uint8, block sizes)
TABLE_VERSION = 2
_V1_DTYPES = ("int8", "uint8")


def _number(x: Any) -> float:
    return float(np.float32(x))


def dumps(table: ScaleTable, *, fingerprint: str | None = None, param_names: Iterable[str] = (),
          float_rewrites: FloatRewrites | None = None, **_: Any) -> str:
    params_set = set(param_names)
    tensors: dict[str, dict[str, Any]] = {}
    for name, p in table.items():
        zp_values = p.zero_point.astype(np.float32) if quant_dtype(p.dtype).is_float else p.zero_point.astype(np.int64)
        to_zp = float if quant_dtype(p.dtype).is_float else int
        scale: Any = np.vectorize(_number, otypes=[object])(p.scale).tolist() if p.scale.ndim else _number(p.scale)
        zp: Any = np.vectorize(to_zp, otypes=[object])(zp_values).tolist() if zp_values.ndim else to_zp(zp_values)
        entry: dict[str, Any] = {"dtype": p.dtype, "axis": p.axis, "scale": scale, "zero_point": zp}
        if p.blockwise:
            entry["block_size"] = p.block_size
        if params_set:
            entry["role"] = "weight" if name in params_set else "activation"
        tensors[name] = entry
    version = 1 if all(p.dtype in _V1_DTYPES and not p.blockwise for p in table.values()) else TABLE_VERSION
    if float_rewrites is not None and float_rewrites.rewrites:
        version = VERSION
    doc: dict[str, Any] = {"format": FORMAT_NAME, "version": version}
    if fingerprint:
        doc["model"] = {"fingerprint": fingerprint}
    if version == VERSION and float_rewrites is not None:
        doc["float_rewrites"] = float_rewrites.to_document()
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


def float_rewrites(text: str, *, source: str = "scales file") -> FloatRewrites | None:
    """The float rewrites an onnxq scales file records (version 3), or None."""
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise OnnxqError(f"{source} is not valid JSON: {exc}") from exc
    _check_header(doc, source)
    if not isinstance(doc, Mapping) or doc.get("float_rewrites") is None:
        return None
    return rewrites_format.from_document(doc["float_rewrites"], source)


def _check_header(doc: Any, source: str) -> int:
    """The version of an onnxq scales document (refused: another format, a newer version)."""
    if not looks_like(doc):
        raise OnnxqError(f'{source} is not an onnxq scales file (expected "format": "{FORMAT_NAME}")')
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise OnnxqError(f"{source}: \"version\" must be an integer, got {version!r}")
    if version > VERSION:
        raise OnnxqError(f"{source} has version {version}, written by a newer onnxq; this one reads version {VERSION}")
    return version


def from_document(doc: Any, *, source: str = "scales file") -> ScaleTable:
    version = _check_header(doc, source)
    tensors = doc.get("tensors")
    if not isinstance(tensors, Mapping):
        raise OnnxqError(f'{source}: "tensors" must be an object mapping tensor names to parameters')
    table: ScaleTable = {}
    for name, entry in tensors.items():
        table[name] = _entry_params(name, entry, source, version)
    return table


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _entry_params(name: str, entry: Any, source: str, version: int = VERSION) -> QuantParams:
    where = f"{source}: tensor {name!r}"
    if not isinstance(entry, Mapping):
        raise OnnxqError(f"{where}: expected an object with dtype, axis, scale, zero_point")
    dtype = entry.get("dtype", "int8")
    if version < 2 and dtype not in _V1_DTYPES:
        raise OnnxqError(f"{where}: dtype must be \"int8\" or \"uint8\" in a version-1 file, got {dtype!r}")
    if dtype not in QUANT_DTYPES:
        raise OnnxqError(f"{where}: dtype must be one of {', '.join(QUANT_DTYPES)}, got {dtype!r}")
    axis = entry.get("axis")
    if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool)):
        raise OnnxqError(f"{where}: axis must be null or an integer, got {axis!r}")
    if "scale" not in entry:
        raise OnnxqError(f"{where}: missing \"scale\"")
    scale, zp = entry["scale"], entry.get("zero_point", 0)
    block_size = entry.get("block_size")
    if block_size is not None:
        return _blockwise_params(where, dtype, axis, block_size, scale, zp)
    per_channel = axis is not None
    if per_channel != isinstance(scale, list):
        kind = "a list (axis is set)" if per_channel else "a number (axis is null)"
        raise OnnxqError(f"{where}: scale must be {kind}")
    if per_channel and not isinstance(zp, list):
        zp = [zp] * len(scale)
    if not all(_is_number(v) for v in (scale if isinstance(scale, list) else [scale])):
        raise OnnxqError(f"{where}: scale must be numbers, got {_short(scale)}")
    zp_ok = _is_number if QUANT_DTYPES[dtype].is_float else _is_integer  # float8 zero points are numbers
    if not all(zp_ok(v) for v in (zp if isinstance(zp, list) else [zp])):
        kind = "numbers" if QUANT_DTYPES[dtype].is_float else "integers"
        raise OnnxqError(f"{where}: zero_point must be {kind}, got {_short(zp)}")
    try:
        scale_arr = np.asarray(scale, dtype=np.float64)
        zp_arr = np.asarray(zp, dtype=np.float64 if QUANT_DTYPES[dtype].is_float else np.int64)
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
    return _checked_params(where, dtype, axis, None, scale_arr, zp_arr)


def _checked_params(where: str, dtype: str, axis: int | None, block_size: int | None, scale_arr: np.ndarray,
                    zp_arr: np.ndarray) -> QuantParams:
    lo, hi = QUANT_DTYPES[dtype].qmin, QUANT_DTYPES[dtype].qmax
    if zp_arr.size and (zp_arr.min() < lo or zp_arr.max() > hi):
        raise OnnxqError(f"{where}: zero_point out of the {dtype} range [{lo:g}, {hi:g}]")
    try:
        return QuantParams(scale_arr.astype(np.float32), zp_arr, dtype, axis, block_size)
    except OnnxqError as exc:
        raise OnnxqError(f"{where}: {exc}") from exc


def _blockwise_params(where: str, dtype: str, axis: Any, block_size: Any, scale: Any, zp: Any) -> QuantParams:
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise OnnxqError(f"{where}: block_size must be a positive integer, got {block_size!r}")
    if axis is None:
        raise OnnxqError(f"{where}: block-wise parameters need an axis")
    try:
        scale_arr = np.asarray(scale, dtype=np.float64)
        zp_arr = np.asarray(zp, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise OnnxqError(f"{where}: block-wise scale and zero_point must be nested lists of numbers: {exc}") from exc
    if zp_arr.ndim == 0:
        zp_arr = np.full(scale_arr.shape, float(zp_arr))
    if scale_arr.ndim < 1 or scale_arr.shape != zp_arr.shape:
        raise OnnxqError(f"{where}: block-wise scale {scale_arr.shape} and zero_point {zp_arr.shape} must be "
                         "nested lists of one shape")
    if not np.all(np.isfinite(scale_arr) & (scale_arr > 0)):
        raise OnnxqError(f"{where}: scales must be finite and positive")
    return _checked_params(where, dtype, axis, block_size, scale_arr, zp_arr)
