"""TensorRT INT8 calibration cache (the text file TensorRT's calibrators write and trtexec ``--calib`` reads).

Format, as TensorRT writes it and as onnxruntime's TensorRT execution provider parses it
(``onnxruntime/core/providers/tensorrt/tensorrt_execution_provider_utils.h``, ``ReadDynamicRange``: "tensor name :
scale in 32-bit single precision IEEE754 format", example ``TRT-7103-EntropyCalibration2`` / ``data_0: 4000889d``)::

    TRT-<version>-<algorithm>            e.g. TRT-8601-EntropyCalibration2, TRT-8601-MinMaxCalibration
    <tensor name>: <8 hex digits>        the float32 scale's IEEE-754 bit pattern, most significant byte first

The value is the *scale*: the dynamic range (amax) is ``scale * 127`` (onnxruntime multiplies by 127.0 when it reads
the file). TensorRT quantization is symmetric int8, so entries become ``QuantParams(scale, 0, "int8")``.

Limits of the format: one scale per tensor, activations only. Weights are not part of a calibration cache -- TensorRT
computes weight scales itself -- so weights (named by the exporter, and any per-channel entry) are left out, as are
asymmetric/uint8 parameters, which cannot be expressed (a warning names how many). Importing a cache therefore gives
activations only; ``quantize --scales X.cache --strict`` asks it for every planned activation and computes the
weights from their values (``onnxq.scales.formats.WEIGHTLESS_FORMATS``).
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from onnxq.errors import OnnxqError
from onnxq.scales.formats import TRT_CACHE_ALGORITHMS, TRT_CACHE_DEFAULT_ALGORITHM, TRT_CACHE_DEFAULT_VERSION
from onnxq.scales.types import QuantParams, ScaleTable

log = logging.getLogger(__name__)


def float_to_hex(value: float) -> str:
    return struct.pack(">f", value).hex()


def hex_to_float(text: str) -> float:
    digits = text.strip().lower()
    if digits.startswith("0x"):
        digits = digits[2:]
    if not digits or len(digits) > 8 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"not an 8-digit hex float32: {text.strip()!r}")
    return struct.unpack(">f", bytes.fromhex(digits.zfill(8)))[0]


def looks_like(text: str) -> bool:
    return text.lstrip("\ufeff").startswith("TRT-")


def dumps(table: ScaleTable, *, trt_version: str | int = TRT_CACHE_DEFAULT_VERSION,
          algorithm: str = TRT_CACHE_DEFAULT_ALGORITHM, param_names: Iterable[str] = (),
          **_: Any) -> str:
    """The cache text: activations only. Weights (``param_names``, and every per-channel entry) are left out --
    TensorRT computes weight scales from the weights itself."""
    params = set(param_names)
    if algorithm not in TRT_CACHE_ALGORITHMS:
        raise OnnxqError(f"unknown calibration algorithm {algorithm!r}; choose one of "
                         f"{', '.join(TRT_CACHE_ALGORITHMS)}")
    version = str(trt_version)
    if not version.isdigit():
        raise OnnxqError(f"TensorRT version for the cache header must be digits like 8601, got {version!r}")
    lines = [f"TRT-{version}-{algorithm}"]
    per_channel, asymmetric, not_int8 = [], [], []
    for name, p in table.items():
        if name in params:
            continue
        if p.dtype not in ("int8", "uint8") or p.blockwise:
            not_int8.append(name)
            continue
        if p.per_channel:
            per_channel.append(name)
            continue
        if not p.symmetric:
            asymmetric.append(name)
            continue
        if "\n" in name or "\r" in name:
            raise OnnxqError(f"tensor name {name!r} contains a line break and cannot be written to a calibration cache")
        lines.append(f"{name}: {float_to_hex(float(p.scale))}")
    if per_channel:
        log.warning("%d per-channel tensor(s) left out of the TensorRT calibration cache (the format holds one scale "
                    "per tensor; TensorRT computes weight scales itself): %s", len(per_channel), _short(per_channel))
    if not_int8:
        log.warning("%d tensor(s) of other formats (fp8, int4, block-wise) left out of the TensorRT calibration cache "
                    "(the cache holds int8 scales only; use the Q/DQ model itself): %s", len(not_int8),
                    _short(not_int8))
    if asymmetric:
        log.warning("%d asymmetric/uint8 tensor(s) left out of the TensorRT calibration cache (TensorRT is symmetric "
                    "int8 only): %s", len(asymmetric), _short(asymmetric))
    return "\n".join(lines) + "\n"


def skipped_on_export(table: ScaleTable) -> list[str]:
    """Names :func:`dumps` leaves out (per-channel, asymmetric, or not int8)."""
    return [name for name, p in table.items()
            if p.per_channel or not p.symmetric or p.dtype != "int8" or p.blockwise]


def header(text: str) -> tuple[str, str]:
    """(version, algorithm) from the first line of a cache."""
    first = text.lstrip("\ufeff").splitlines()[0].strip() if text.strip() else ""
    parts = first.split("-", 2)
    if len(parts) != 3 or parts[0] != "TRT":
        raise OnnxqError(f"not a TensorRT calibration cache: first line {first[:60]!r} should be like "
                         f"'TRT-8601-EntropyCalibration2'")
    return parts[1], parts[2]


def loads(text: str, *, source: str = "calibration cache", **_: Any) -> ScaleTable:
    if "\x00" in text:
        raise OnnxqError(f"{source} is binary, not a TensorRT calibration cache (text); onnxruntime's flatbuffer "
                         "calibration tables are not supported")
    try:
        _version, algorithm = header(text)
    except OnnxqError as exc:
        raise OnnxqError(f"{source}: {exc}") from exc
    if algorithm not in TRT_CACHE_ALGORITHMS:
        log.warning("%s: unknown calibration algorithm %r in the header; reading it anyway", source, algorithm)
    table: ScaleTable = {}
    for lineno, raw in enumerate(text.lstrip("\ufeff").splitlines()[1:], start=2):
        line = raw.strip()
        if not line:
            continue
        name, sep, value = line.rpartition(":")
        name = name.strip()
        if not sep or not name:
            raise OnnxqError(f"{source} line {lineno}: expected '<tensor name>: <hex scale>', got {line[:80]!r}")
        try:
            scale = hex_to_float(value)
        except ValueError as exc:
            raise OnnxqError(f"{source} line {lineno} (tensor {name!r}): {exc}") from exc
        if not (math.isfinite(scale) and scale > 0):
            raise OnnxqError(f"{source} line {lineno}: tensor {name!r} has scale {scale}; scales must be finite "
                             "and positive (regenerate the cache)")
        if name in table:
            log.warning("%s: tensor %r appears twice; keeping the last value", source, name)
        table[name] = QuantParams(np.array(scale, np.float32), np.array(0, np.int8), "int8", None)
    return table


def _short(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")
