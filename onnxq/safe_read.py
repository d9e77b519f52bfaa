"""Bounded reads of user files: nothing is read before its kind and size are known to be sane.

* Only regular files are read: a FIFO would block forever, ``/dev/zero`` never ends, a socket cannot be read.
* Text inputs (``--scales``, ``--config``) have a size limit and a nesting-depth limit (Python's JSON and TOML
  parsers recurse per nesting level and die with ``RecursionError`` on a few thousand ``[``).
* ``.npy`` arrays, alone or inside ``.npz`` archives, are checked from their header (``numpy.lib.format``: magic,
  then a dict with ``descr``, ``fortran_order``, ``shape``) before any data is read: no object dtype, a sane
  number of bytes, and a header that agrees with the bytes actually stored (a 3 MB compressed member that declares
  3 GB, or a declared shape of 2**40, is refused before anything is allocated).
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from onnxq.errors import OnnxqError

MAX_TEXT_BYTES = 64 * 1024**2  # --scales files: AIMET encodings of large models stay far below this
MAX_CONFIG_BYTES = 1024**2  # --config TOML
MAX_NESTING = 64  # JSON/TOML depth; onnxq's own formats need 4
MAX_ARRAY_BYTES = 4 * 1024**3  # one calibration/validation batch array, or one statistics array
MAX_NPZ_MEMBERS = 100_000


def regular_file(path: str | os.PathLike, what: str) -> os.stat_result:
    """``stat`` of ``path`` after checking it is an existing, readable, regular file."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise OnnxqError(f"{what} not found: {path}") from exc
    except OSError as exc:
        raise OnnxqError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise OnnxqError(f"expected a {what}, got a directory: {path}")
    if not stat.S_ISREG(st.st_mode):
        raise OnnxqError(f"{what} {path} is not a regular file (a FIFO, device or socket); give a file")
    if not os.access(path, os.R_OK):
        raise OnnxqError(f"cannot read {what} {path}: permission denied")
    return st


def read_bytes(path: str | os.PathLike, what: str, limit: int) -> bytes:
    st = regular_file(path, what)
    if st.st_size > limit:
        raise OnnxqError(f"{what} {path} is {st.st_size / 1e6:.1f} MB, over the {limit / 1e6:.0f} MB limit for "
                         "this kind of file; is it the right file?")
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)[:limit]
    except OSError as exc:
        raise OnnxqError(f"cannot read {what} {path}: {exc.strerror}") from exc


def check_nesting(text: str, what: str, limit: int = MAX_NESTING) -> None:
    """Refuse JSON/TOML nested deeper than ``limit`` (brackets and braces outside strings), before parsing."""
    depth = 0
    quote = None
    escaped = comment = False
    for ch in text:
        if comment:
            comment = ch != "\n"
            continue
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                raise OnnxqError(f"{what} is nested more than {limit} levels deep; onnxq's formats need a few")
        elif ch in "]}":
            depth -= 1


def _array_header(fp: IO[bytes], what: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and header length of the .npy stream ``fp``, read from its header only."""
    try:
        version = npy_format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(fp, max_header_size=10000)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = npy_format.read_array_header_2_0(fp, max_header_size=10000)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise OnnxqError(f"cannot read {what}: not a .npy array: {str(exc).splitlines()[0] if str(exc) else exc}"
                         ) from exc
    if dtype.hasobject:
        raise OnnxqError(f"{what} holds Python objects (dtype {dtype}); onnxq reads numeric arrays only")
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise OnnxqError(f"{what} declares an invalid shape {shape}")
    return tuple(shape), dtype, fp.tell()


def _declared_bytes(shape: tuple[int, ...], dtype: np.dtype, what: str, limit: int) -> int:
    count = 1
    for d in shape:
        count *= d
    nbytes = count * dtype.itemsize
    if nbytes > limit:
        raise OnnxqError(f"{what} declares shape {shape} of {dtype} ({nbytes / 1e9:.1f} GB), over the "
                         f"{limit / 1e9:.1f} GB limit per array; split the data into smaller batches")
    return nbytes


def load_npy(path: str | os.PathLike, what: str | None = None, limit: int | None = None) -> np.ndarray:
    """A .npy file, its header checked (dtype, size, against the file's real size) before the data is read."""
    what = what or str(path)
    limit = MAX_ARRAY_BYTES if limit is None else limit
    st = regular_file(path, "array file")
    with open(path, "rb") as f:
        shape, dtype, header = _array_header(f, what)
        nbytes = _declared_bytes(shape, dtype, what, limit)
        if header + nbytes > st.st_size:
            raise OnnxqError(f"{what} is truncated: its header declares {nbytes} bytes of data, the file holds "
                             f"{st.st_size - header}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise OnnxqError(f"cannot read {what}: {exc}") from exc


class NpzArchive:
    """An .npz archive whose members are checked from their headers before they are read."""

    def __init__(self, path: str | os.PathLike, limit: int | None = None) -> None:
        self.path = Path(path)
        self.limit = MAX_ARRAY_BYTES if limit is None else limit
        regular_file(path, "array archive")
        try:
            self._zip = zipfile.ZipFile(self.path)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise OnnxqError(f"{self.path} is not a readable .npz archive (truncated or corrupt?): {exc}") from exc
        if len(infos) > MAX_NPZ_MEMBERS:
            raise OnnxqError(f"{self.path} holds {len(infos)} arrays, over the limit of {MAX_NPZ_MEMBERS}")
        self._infos = {i.filename[:-4] if i.filename.endswith(".npy") else i.filename: i for i in infos}

    @property
    def files(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, key: str) -> bool:
        return key in self._infos

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        info = self._infos[key]
        what = f"{self.path}[{key}]"
        try:
            with self._zip.open(info) as fp:
                shape, dtype, header = _array_header(fp, what)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
            raise OnnxqError(f"{what} cannot be read (corrupt archive?): {exc}") from exc
        nbytes = _declared_bytes(shape, dtype, what, self.limit)
        if header + nbytes != info.file_size:
            raise OnnxqError(f"{what} declares {nbytes} bytes of data but the archive stores "
                             f"{max(info.file_size - header, 0)}; the file is corrupt")
        return shape, dtype

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._infos:
            raise OnnxqError(f"{self.path} has no array {key!r}")
        self.header(key)
        what = f"{self.path}[{key}]"
        try:
            with self._zip.open(self._infos[key]) as fp:
                return npy_format.read_array(fp, allow_pickle=False)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
            raise OnnxqError(f"{what} cannot be read (corrupt archive?): {exc}") from exc

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> NpzArchive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
