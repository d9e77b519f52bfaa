"""Calibration and validation data: batches read from disk (or generated when asked), checked against the model.

Accepted layouts:
- a folder of ``.npy`` files, one batch each (single-input models only);
- a folder of ``.npz`` files, one batch each, keys = model input names (other files, and subfolders such as
  ``labels/``, are ignored);
- one ``.npz`` file holding a stack: each key's array has one more leading axis than the input (a stack of batches),
  or the input's rank (samples, cut into batches of ``batch_size`` along axis 0).
Batches stream one at a time; names, dtypes, ranks and static dimensions are checked, and NaN/Inf is refused with the
file and input named.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxq.errors import OnnxqError
from onnxq.graph import printable
from onnxq.safe_read import NpzArchive, load_npy

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # int for static dims, a name or None for dynamic ones


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The real inputs of a model (initializers listed as inputs by old exporters are not inputs)."""
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type") or tensor.elem_type == onnx.TensorProto.UNDEFINED:
            raise OnnxqError(f"model input {printable(value.name)!r} has no tensor element type; re-export the model "
                             "with typed inputs (or set the type with onnx.helper.make_tensor_value_info)")
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        except (KeyError, TypeError, ValueError) as exc:
            raise OnnxqError(f"model input {printable(value.name)!r} has element type {tensor.elem_type}, which "
                             "onnxq cannot feed from numpy data") from exc
        dims: list[int | str | None] = []
        for d in tensor.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        specs.append(InputSpec(value.name, dtype, tuple(dims)))
    return specs


class BatchSource:
    """A re-iterable sequence of checked batches (iterate it once per calibration pass)."""

    def __init__(self, model: onnx.ModelProto, path: str | os.PathLike, *, max_batches: int | None = None,
                 batch_size: int = 8, files: Sequence[str | Path] | None = None) -> None:
        """``files``: read only these files of the folder ``path`` (one shard of it), in the order given."""
        self.specs = model_inputs(model)
        self.path = Path(path)
        self.max_batches = max_batches
        self.batch_size = batch_size
        if not self.path.exists():
            raise OnnxqError(f"data path not found: {self.path}")
        self._files = self._list_files() if files is None else self._shard_files(files)

    @property
    def files(self) -> list[Path]:
        """The data files read, in reading order (a folder's files sorted by name; one file for a stack)."""
        return list(self._files)

    def _shard_files(self, files: Sequence[str | Path]) -> list[Path]:
        paths = [Path(f) for f in files]
        if not paths:
            raise OnnxqError(f"an empty shard of {self.path}: give at least one file")
        for path in paths:
            if not path.is_file():
                raise OnnxqError(f"data file not found: {path} (is {self.path} on storage this machine sees?)")
        if self.path.is_file() and paths != [self.path]:
            raise OnnxqError(f"{self.path} is one .npz stack; it cannot be read as a shard of other files")
        return paths

    def _list_files(self) -> list[Path]:
        if self.path.is_file():
            if self.path.suffix != ".npz":
                raise OnnxqError(f"a single data file must be an .npz stack, got {self.path.name}")
            return [self.path]
        if not self.path.is_dir():
            raise OnnxqError(f"data path {self.path} is neither a folder nor a regular .npz file (a FIFO or device?)")
        try:
            entries = list(self.path.iterdir())
        except OSError as exc:
            raise OnnxqError(f"cannot list data folder {self.path}: {exc.strerror}") from exc
        files = sorted(p for p in entries if p.suffix in (".npy", ".npz") and p.is_file())
        if not files:
            raise OnnxqError(f"no .npy or .npz files in {self.path}")
        if any(p.suffix == ".npy" for p in files):
            if len(self.specs) != 1:
                names = ", ".join(s.name for s in self.specs)
                raise OnnxqError(f"{self.path} holds .npy files but the model has {len(self.specs)} inputs "
                                 f"({names}); use .npz files keyed by input name")
            if any(p.suffix == ".npz" for p in files):
                raise OnnxqError(f"{self.path} mixes .npy and .npz files; use one kind")
        return files

    def __iter__(self) -> Iterator[Batch]:
        count = 0
        for file in self._files:
            for label, batch in self._read(file):
                if self.max_batches is not None and count >= self.max_batches:
                    return
                check_batch(batch, self.specs, label)
                count += 1
                yield batch

    def __len__(self) -> int:
        """Number of batches (counted from array headers, without reading the data)."""
        if self.path.is_file():
            with NpzArchive(self.path) as npz:
                first = self.specs[0]
                if first.name not in npz:
                    raise OnnxqError(f"{self.path.name} has no array for input {printable(first.name)!r}")
                shape, _ = npz.header(first.name)
                n = _stack_length_of(shape, first, self.batch_size)
        else:
            n = len(self._files)
        return min(n, self.max_batches) if self.max_batches is not None else n

    def _read(self, file: Path) -> Iterator[tuple[str, Batch]]:
        """Arrays checked from their headers (dtype, size, truncation) before their data is read."""
        if file.suffix == ".npy":
            yield file.name, {self.specs[0].name: load_npy(file)}
            return
        with NpzArchive(file) as npz:
            arrays = {k: npz[k] for k in npz.files}
        if self.path.is_file():
            yield from _split_stack(file.name, arrays, self.specs, self.batch_size)
        else:
            yield file.name, arrays


def _stack_length(array: np.ndarray, spec: InputSpec, batch_size: int) -> int:
    return _stack_length_of(array.shape, spec, batch_size)


def _stack_length_of(shape: tuple[int, ...], spec: InputSpec, batch_size: int) -> int:
    if not shape:
        raise OnnxqError(f"input {printable(spec.name)!r}: a stack of samples needs at least one axis, got a scalar")
    if len(shape) == len(spec.shape) + 1:
        return shape[0]
    return -(-shape[0] // batch_size)


def _split_stack(label: str, arrays: Batch, specs: list[InputSpec], batch_size: int) -> Iterator[tuple[str, Batch]]:
    _check_names(arrays, specs, label)
    for spec in specs:
        static_batch = spec.shape[0] if spec.shape else None
        if (arrays[spec.name].ndim == len(spec.shape) and isinstance(static_batch, int)
                and static_batch != batch_size):
            raise OnnxqError(f"{label}: input {spec.name!r} has a static batch of {static_batch}, but the stack of "
                             f"samples is cut into batches of {batch_size}; pass --batch-size {static_batch}")
    first = specs[0]
    n = _stack_length(arrays[first.name], first, batch_size)
    for i in range(n):
        batch = {}
        for spec in specs:
            a = arrays[spec.name]
            batch[spec.name] = a[i] if a.ndim == len(spec.shape) + 1 else a[i * batch_size:(i + 1) * batch_size]
        yield f"{label}[{i}]", batch


def _check_names(batch: Batch, specs: list[InputSpec], label: str) -> None:
    expected = {s.name for s in specs}
    missing = sorted(expected - batch.keys())
    extra = sorted(batch.keys() - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(map(printable, missing))}")
        if extra:
            parts.append(f"unknown key(s) {', '.join(map(printable, extra))}")
        raise OnnxqError(f"{label}: {'; '.join(parts)} (model inputs: {', '.join(map(printable, sorted(expected)))})")


def check_batch(batch: Batch, specs: list[InputSpec], label: str) -> None:
    """Names, dtypes, ranks, static dims, finiteness of one batch; errors name the file and input."""
    _check_names(batch, specs, label)
    for spec in specs:
        a = batch[spec.name]
        if a.dtype != spec.dtype:
            raise OnnxqError(f"{label}: input {spec.name!r} has dtype {a.dtype}, the model expects {spec.dtype} "
                             f"(convert with arr.astype(np.{spec.dtype.name}))")
        if a.ndim != len(spec.shape):
            raise OnnxqError(f"{label}: input {spec.name!r} has rank {a.ndim} (shape {a.shape}), the model expects "
                             f"rank {len(spec.shape)} {_fmt_shape(spec.shape)}")
        for axis, (got, want) in enumerate(zip(a.shape, spec.shape)):
            if isinstance(want, int) and got != want:
                raise OnnxqError(f"{label}: input {spec.name!r} has shape {a.shape}, the model expects "
                                 f"{_fmt_shape(spec.shape)} (axis {axis}: {got} != {want})")
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            raise OnnxqError(f"{label}: input {spec.name!r} holds {bad} NaN/Inf value(s); clean the data first")


def _fmt_shape(shape: tuple[int | str | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


class RandomSource:
    """Seeded random batches for models whose dynamic dims are only the batch axis; scales from it mean nothing."""

    def __init__(self, model: onnx.ModelProto, *, batches: int = 8, batch_size: int = 1, seed: int = 0,
                 shapes: dict[str, tuple[int, ...]] | None = None) -> None:
        self.specs = model_inputs(model)
        self.batches = batches
        self.seed = seed
        self.shapes = {}
        for spec in self.specs:
            if shapes and spec.name in shapes:
                self.shapes[spec.name] = shapes[spec.name]
                continue
            dims = [d if isinstance(d, int) else None for d in spec.shape]
            if None in dims[1:]:
                raise OnnxqError(f"input {spec.name!r} has dynamic dims {_fmt_shape(spec.shape)} beyond the batch "
                                 "axis; random data needs a fixed shape (give real data with --calib DIR)")
            self.shapes[spec.name] = tuple(batch_size if d is None else d for d in dims)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng(self.seed)
        for _ in range(self.batches):
            batch = {}
            for spec in self.specs:
                shape = self.shapes[spec.name]
                if np.issubdtype(spec.dtype, np.floating):
                    batch[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
                elif spec.dtype == np.bool_:
                    batch[spec.name] = rng.integers(0, 2, shape).astype(bool)
                else:
                    batch[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)
            yield batch


DataSource = BatchSource | RandomSource
