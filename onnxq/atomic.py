"""Atomic file writes: a temporary file in the target folder, renamed into place."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from onnxq.errors import OnnxqError


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OnnxqError(f"output path is a directory: {path}")
    if not folder.exists():
        raise OnnxqError(f"output folder does not exist: {folder}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | os.PathLike, payload: object) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
