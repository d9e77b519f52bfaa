"""AIMET / Qualcomm AI Engine quantization encodings (JSON), version 0.6.1 (reads 0.4.x-0.6.x).

Specification: AIMET "Encoding Format Specification" (https://quic.github.io/aimet-pages/AimetDocs/quantsim/
encoding_spec.html, section "Version 0.6.1"; source ``Docs/api_docs/quantization_encoding_specification.rst`` in
github.com/quic/aimet)::

    {"version": "0.6.1",
     "activation_encodings": {<tensor name>: [Encoding, ...]},
     "param_encodings":      {<tensor name>: [Encoding, ...]},
     "quantizer_args": {...}}                                   # optional
    Encoding: {"dtype": "int"|"float", "bitwidth": int, "is_symmetric": "True"|"False",
               "max": float, "min": float, "offset": int, "scale": float}

"If a tensor is assigned more than one Encoding then the encoding is at per channel basis." Versions before 0.5 have
no ``dtype`` (integer implied). AIMET's grid is unsigned: ``real = (q + offset) * scale`` with ``q`` in
``[0, 2**bitwidth - 1]`` and ``offset <= 0``; so ``min = offset * scale`` and ``max = (2**bw - 1 + offset) * scale``.

Mapping to ONNX ``QuantizeLinear`` parameters (``real = (q - zero_point) * scale``):

* uint8: ``zero_point = -offset``;
* int8 (signed grid, ``q_signed = q - 128``): ``zero_point = -(offset + 128)``; symmetric int8 is ``offset = -128``.

On import, ``is_symmetric == "True"`` with ``offset == -128`` gives symmetric int8; any other 8-bit encoding gives
uint8 with ``zero_point = -offset``. The format does not record the channel axis of per-channel encodings: it is
taken from ``channel_axes`` (tensor name -> axis) when given, else 0 (the output-channel axis of Conv weights) -- pass
the plan's axes for ConvTranspose / Gemm / MatMul weights. Only 8-bit integer encodings are read; float or other
bit widths are refused with an error naming the tensor.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from onnxq.dtypes import INT8, UINT8, quant_dtype
from onnxq.errors import OnnxqError
from onnxq.scales.types import QuantParams, ScaleTable

log = logging.getLogger(__name__)

VERSION = "0.6.1"


def looks_like(doc: Any) -> bool:
    return isinstance(doc, Mapping) and ("activation_encodings" in doc or "param_encodings" in doc)


# AIMET's 8-bit grid is onnxq's uint8 range; int8 values are that grid shifted by int8's qmin
GRID_MAX = UINT8.qmax
SIGNED_SHIFT = -INT8.qmin


def _encoding(scale: float, zero_point: int, dtype: str) -> dict[str, Any]:
    offset = -zero_point if dtype == UINT8.name else -(zero_point + SIGNED_SHIFT)
    scale = float(np.float32(scale))
    return {
        "bitwidth": 8,
        "dtype": "int",
        "is_symmetric": "True" if (quant_dtype(dtype).symmetric and zero_point == 0) else "False",
        "max": float((GRID_MAX + offset) * scale),
        "min": float(offset * scale),
        "offset": int(offset),
        "scale": scale,
    }


def dumps(table: ScaleTable, *, param_names: Iterable[str] | None = None, **_: Any) -> str:
    """AIMET 0.6.1 JSON. ``param_names`` go to ``param_encodings``; without it, per-channel entries do."""
    params_set = set(param_names) if param_names is not None else None
    activations: dict[str, list[dict[str, Any]]] = {}
    params: dict[str, list[dict[str, Any]]] = {}
    unsupported = sorted(name for name, p in table.items() if p.dtype not in ("int8", "uint8") or p.blockwise)
    if unsupported:
        log.warning("%d tensor(s) of other formats (fp8, int4, block-wise) left out of the AIMET encodings (onnxq "
                    "writes AIMET 0.6.1 8-bit integer encodings, which have no float8 type and no block layout): %s",
                    len(unsupported), ", ".join(unsupported[:5]) + (" ..." if len(unsupported) > 5 else ""))
    for name, p in table.items():
        if name in unsupported:
            continue
        scales = p.scale.reshape(-1)
        zps = p.zero_point.reshape(-1)
        entries = [_encoding(float(s), int(z), p.dtype) for s, z in zip(scales, zps)]
        is_param = (name in params_set) if params_set is not None else p.per_channel
        (params if is_param else activations)[name] = entries
    all_params = list(params.values())
    doc = {
        "version": VERSION,
        "activation_encodings": activations,
        "param_encodings": params,
        "excluded_layers": [],
        "quantizer_args": {
            "activation_bitwidth": 8,
            "dtype": "int",
            "is_symmetric": "True" if all(p.symmetric for p in table.values()) else "False",
            "param_bitwidth": 8,
            "per_channel_quantization": "True" if any(len(e) > 1 for e in all_params) else "False",
            "quant_scheme": "post_training_tf",
        },
    }
    return json.dumps(doc, indent=2) + "\n"


def loads(text: str, *, source: str = "AIMET encodings", channel_axes: Mapping[str, int] | None = None,
          **_: Any) -> ScaleTable:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OnnxqError(f"{source} is not valid JSON: {exc}") from exc
    return from_document(doc, source=source, channel_axes=channel_axes)


def from_document(doc: Any, *, source: str = "AIMET encodings",
                  channel_axes: Mapping[str, int] | None = None) -> ScaleTable:
    if not looks_like(doc):
        raise OnnxqError(f"{source} is not an AIMET encodings file (no activation_encodings / param_encodings)")
    version = str(doc.get("version", "0.4.0"))
    if not version.startswith("0."):
        raise OnnxqError(f"{source}: AIMET encodings version {version} is not supported; export with version 0.6.1 "
                         "(the per-tensor-name format)")
    axes = dict(channel_axes or {})
    args = doc.get("quantizer_args") if isinstance(doc.get("quantizer_args"), Mapping) else {}
    # With per-channel quantization on, a parameter's list holds one encoding per channel, so a one-element list of a
    # weight planned per channel is per channel (one channel), not per tensor: the round trip stays exact.
    per_channel_params = str(args.get("per_channel_quantization", "False")).lower() == "true"
    table: ScaleTable = {}
    for section in ("activation_encodings", "param_encodings"):
        entries = doc.get(section) or {}
        if isinstance(entries, list):  # 1.0.0 style lists of {"name": ...} are not 0.x
            raise OnnxqError(f"{source}: {section} is a list (AIMET 1.x format); only the 0.6.1 layout is supported")
        if not isinstance(entries, Mapping):
            raise OnnxqError(f"{source}: {section} must map tensor names to lists of encodings")
        for name, encodings in entries.items():
            if name in table:
                log.warning("%s: tensor %r is in both activation and param encodings; keeping the first", source, name)
                continue
            one_channel = per_channel_params and section == "param_encodings" and name in axes
            table[name] = _params(name, encodings, axes.get(name, 0), f"{source}: tensor {name!r}", one_channel)
    return table


def _params(name: str, encodings: Any, axis: int, where: str, one_channel: bool = False) -> QuantParams:
    if isinstance(encodings, Mapping):
        encodings = [encodings]
    if not isinstance(encodings, list) or not encodings:
        raise OnnxqError(f"{where}: expected a non-empty list of encodings")
    scales, offsets, symmetric = [], [], []
    for i, enc in enumerate(encodings):
        if not isinstance(enc, Mapping):
            raise OnnxqError(f"{where}: encoding {i} is not an object")
        if str(enc.get("dtype", "int")) != "int":
            raise OnnxqError(f"{where}: dtype {enc.get('dtype')!r} is not an integer encoding; only int8 is supported")
        bitwidth = enc.get("bitwidth")
        if bitwidth != 8:
            raise OnnxqError(f"{where}: bitwidth {bitwidth!r} is not supported; only 8-bit encodings can be imported")
        try:
            offset = int(round(float(enc.get("offset", 0))))
            if "scale" in enc:
                scale = float(enc["scale"])
            else:
                scale = (float(enc["max"]) - float(enc["min"])) / GRID_MAX
        except (KeyError, TypeError, ValueError) as exc:
            raise OnnxqError(f"{where}: encoding {i} needs numeric scale (or min/max) and offset: {exc}") from exc
        if not (math.isfinite(scale) and scale > 0):
            raise OnnxqError(f"{where}: encoding {i} has scale {scale}; scales must be finite and positive")
        if not -GRID_MAX <= offset <= 0:
            raise OnnxqError(f"{where}: encoding {i} has offset {offset}, outside the 8-bit range [-255, 0]")
        scales.append(scale)
        offsets.append(offset)
        symmetric.append(str(enc.get("is_symmetric", "False")).lower() == "true")
    if all(symmetric) and all(o == -SIGNED_SHIFT for o in offsets):
        dtype, zps = "int8", [0] * len(offsets)
    else:
        dtype, zps = "uint8", [-o for o in offsets]
    per_channel = len(scales) > 1 or one_channel
    scale_arr = np.asarray(scales if per_channel else scales[0], dtype=np.float32)
    zp_arr = np.asarray(zps if per_channel else zps[0]).astype(dtype)
    try:
        return QuantParams(scale_arr, zp_arr, dtype, axis if per_channel else None)
    except OnnxqError as exc:
        raise OnnxqError(f"{where}: {exc}") from exc
