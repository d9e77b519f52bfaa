"""Load and save scale files in any supported format, and check imported scales against a plan.

Formats: ``json`` (onnxq's own, :mod:`onnxq.scales.json_format`), ``trt-cache`` (TensorRT calibration cache,
:mod:`onnxq.scales.trt_cache`), ``aimet`` (AIMET 0.6.1 encodings, :mod:`onnxq.scales.aimet`). Reading detects the
format from the content when none is given. Writing goes to a temporary file in the target folder and is renamed into
place, so a failed write never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onnxq import safe_read
from onnxq.atomic import write_text_atomic
from onnxq.errors import OnnxqError
from onnxq.findings import Finding
from onnxq.safe_read import check_nesting, read_bytes
from onnxq.scales import aimet, json_format, trt_cache
from onnxq.scales.formats import FORMATS
from onnxq.scales.types import ScaleTable

_MODULES = {"json": json_format, "trt-cache": trt_cache, "aimet": aimet}


def read_text(path: Path) -> str:
    """The text of a scales file: a regular file, bounded in size and nesting depth."""
    return _read_text(path)


def _read_text(path: Path) -> str:
    data = read_bytes(path, "scales file", safe_read.MAX_TEXT_BYTES)
    if not data.strip():
        raise OnnxqError(f"scales file is empty: {path}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OnnxqError(f"{path} is not a text scales file (json, TensorRT calibration cache or AIMET encodings): "
                         f"{exc.reason} at byte {exc.start}") from exc
    check_nesting(text, f"scales file {path}")
    return text


def detect_format(text: str, source: str = "scales file") -> str:
    """``json`` | ``trt-cache`` | ``aimet``, from the file's content."""
    if trt_cache.looks_like(text):
        return "trt-cache"
    stripped = text.lstrip("\ufeff").lstrip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(stripped)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise OnnxqError(f"{source} looks like JSON but does not parse: {exc}") from exc
        if json_format.looks_like(doc):
            return "json"
        if aimet.looks_like(doc):
            return "aimet"
        raise OnnxqError(f'{source} is JSON but neither an onnxq scales file ("format": "onnxq-scales") nor AIMET '
                         "encodings (activation_encodings / param_encodings)")
    raise OnnxqError(f"cannot tell the format of {source}: not JSON and no 'TRT-' calibration cache header; "
                     f"pass the format explicitly ({', '.join(FORMATS)})")


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise OnnxqError(f"unknown scales format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def scales_format(path: str | os.PathLike, format: str | None = None) -> str:
    """The format of a scales file: ``format`` when given (checked), else detected from its content."""
    return _check_format(format) if format else detect_format(_read_text(Path(path)), str(path))


def load_scales(path: str | os.PathLike, format: str | None = None, **options: Any) -> ScaleTable:
    """Read a scales file. ``format`` None detects it. ``options`` go to the reader (AIMET: ``channel_axes``)."""
    path = Path(path)
    text = _read_text(path)
    fmt = _check_format(format) if format else detect_format(text, str(path))
    return _MODULES[fmt].loads(text, source=str(path), **options)


def dumps_scales(table: ScaleTable, format: str, **meta: Any) -> str:
    return _MODULES[_check_format(format)].dumps(table, **meta)


def save_scales(table: ScaleTable, path: str | os.PathLike, format: str, **meta: Any) -> Path:
    """Write ``table`` to ``path`` atomically. ``meta`` per format: json ``fingerprint``, ``param_names``;
    trt-cache ``trt_version``, ``algorithm``; aimet ``param_names``."""
    text = dumps_scales(table, format, **meta)
    return write_text_atomic(path, text)


def check_scales(table: ScaleTable, expected: Mapping[str, int | None], strict: bool = False) -> list[Finding]:
    """Compare imported ``table`` with ``expected`` (planned tensor -> channel count, or None for per-tensor).

    * ``unknown-tensor``: a name in the file that the plan does not quantize (error when ``strict``, else warning);
    * ``missing-tensor``: a planned tensor the file does not cover (error when ``strict``, else warning: it will be
      calibrated or left float, as the caller decides);
    * ``channel-mismatch`` (error): per-channel scales whose count differs from the planned channel count, or
      per-channel scales for a tensor planned per tensor;
    * ``per-tensor-for-channels`` (warning): one scale for a tensor planned per channel (valid, broadcast, less
      precise);
    * ``invalid-scale`` (error): a non-finite or non-positive scale (only possible for tables built in code: the
      loaders already refuse them).
    """
    level = "error" if strict else "warning"
    findings: list[Finding] = []
    for name, params in table.items():
        scale = np.asarray(params.scale, dtype=np.float64)
        if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            findings.append(Finding("error", "invalid-scale", name, "scales must be finite and positive"))
        if name not in expected:
            findings.append(Finding(level, "unknown-tensor", name, "in the scales file but not a tensor the "
                                         "plan quantizes (renamed or skipped?)"))
            continue
        channels = expected[name]
        if params.per_channel:
            if channels is None:
                findings.append(Finding("error", "channel-mismatch", name, f"{params.channels} per-channel "
                                             "scales, but the plan quantizes it per tensor"))
            elif params.channels != channels:
                findings.append(Finding("error", "channel-mismatch", name,
                                             f"{params.channels} per-channel scales, but the tensor has {channels} "
                                             f"channels"))
        elif channels is not None and channels > 1:
            findings.append(Finding("warning", "per-tensor-for-channels", name,
                                         f"one scale for a tensor planned per channel ({channels} channels)"))
    for name in expected:
        if name not in table:
            findings.append(Finding(level, "missing-tensor", name, "planned for quantization but not in the file"))
    return findings
