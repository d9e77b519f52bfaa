"""Loading and saving ONNX models, and a read-only index of a graph's edges.

Loading never modifies the input file. Saving writes to a temporary file in the target folder and renames it into
place, refuses to overwrite the model it was read from, and moves weights to external data past 2 GB.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper
from onnx.external_data_helper import load_external_data_for_model

from onnxq.atomic import AtomicGroup
from onnxq.errors import OnnxqError
from onnxq.outputs import Output, check_outputs
from onnxq.safe_read import regular_file

log = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2  # leave headroom under protobuf's 2 GB limit
EXTERNAL_TENSOR_MIN_BYTES = 1024  # tensors at least this large go to the external-data file
EXTERNAL_DATA_ALIGNMENT = 4096  # offsets aligned to pages, so onnxruntime can memory-map them
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def _regular_input_file(path: Path, what: str) -> None:
    """A readable regular file (:func:`onnxq.safe_read.regular_file`) that is not empty."""
    st = regular_file(path, what)
    if st.st_size == 0:
        raise OnnxqError(f"{what} is empty: {path}")


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX model (with its external data, whose locations are checked first) and check it; any problem is
    an :class:`OnnxqError`. The file is opened read-only and never written.

    A model past the protobuf limit keeps its tensors over 1 MB on disk: they point at the input's external-data
    file by absolute path (in memory only) and are read one at a time by :func:`tensor_array`; save such a model
    with :func:`save_model` (``onnx.save`` would write those absolute references as they are)."""
    path = Path(path)
    _regular_input_file(path, "model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except PermissionError as exc:
        raise OnnxqError(f"cannot read model file {path}: permission denied") from exc
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise OnnxqError(f"{path} is not a readable ONNX model (truncated or not ONNX?): "
                         f"{printable(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)}"
                         ) from exc
    if not model.graph.node or not model.opset_import:
        raise OnnxqError(f"{path} is not an ONNX model: it has no graph nodes or no opset")
    files = checked_external_files(model, path)
    large = needs_external_data(model)  # sizes of external tensors come from their recorded lengths
    if files:
        try:
            if large:  # weights stay in the file, read one at a time when needed (tensor_array): one copy in memory
                _reference_external_data(model, path.parent.resolve())
            else:
                load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise OnnxqError(f"external data of {path} cannot be read: {printable(str(exc).splitlines()[0])}") from exc
    if large:  # the checker reads the file itself: no temporary copy of the weights
        try:
            onnx.checker.check_model(str(path))
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise OnnxqError(f"{path} fails the ONNX checker: {printable(_first_line(exc))}") from exc
    else:
        check_model(model, what=str(path))
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


LAZY_TENSOR_MIN_BYTES = 1024**2  # external tensors of a large model at least this large stay on disk


def _reference_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """Large external tensors keep pointing at the input's files, by absolute path (in memory only: nothing is
    written back); small ones are read in."""
    for tensor in all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = _external_entries(tensor)
        location = str(folder / entries["location"])
        _set_external(tensor, location, int(entries.get("offset", 0) or 0), tensor_nbytes(tensor))
        if tensor_nbytes(tensor) < min(LAZY_TENSOR_MIN_BYTES, EXTERNAL_DATA_THRESHOLD // 64):
            raw = _read_external(tensor)
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = raw


def _set_external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _read_external(tensor: onnx.TensorProto) -> bytes:
    entries = _external_entries(tensor)
    offset = int(entries.get("offset", 0) or 0)
    with open(entries["location"], "rb") as f:
        f.seek(offset)
        return f.read(tensor_nbytes(tensor))


def tensor_bytes(tensor: onnx.TensorProto) -> bytes:
    """The little-endian bytes of a tensor's data, read from disk for a tensor left there by :func:`load_model`."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        if not os.path.isabs(_external_entries(tensor).get("location", "")):
            raise OnnxqError(f"tensor {printable(tensor.name)!r} still points to external data; load the model "
                             "with onnxq.graph.load_model")
        return _read_external(tensor)
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return numpy_helper.to_array(tensor).tobytes()


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """A tensor's values; a weight left on disk by :func:`load_model` is read from there."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    tensor_bytes(tensor) if not os.path.isabs(_external_entries(tensor).get("location", "")) else None  # checks
    entries = _external_entries(tensor)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    array = np.fromfile(entries["location"], dtype=dtype, count=count, offset=int(entries.get("offset", 0) or 0))
    if array.size != count:
        raise OnnxqError(f"external data of tensor {printable(tensor.name)!r} is truncated")
    return array.reshape(tuple(tensor.dims)).astype(dtype.newbyteorder("="), copy=False)


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of a model: initializers and tensor attributes, in subgraphs too."""
    def of_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from of_graph(attr.g)
                for sub in attr.graphs:
                    yield from of_graph(sub)
    yield from of_graph(model.graph)


def _external_entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def checked_external_files(model: onnx.ModelProto, path: Path) -> list[Path]:
    """The external-data files of ``model`` (read from ``path``), each checked: a relative location inside the
    model's folder, no symlink leading out of it, a regular file, offsets and lengths within the file.

    onnx before 1.21 follows a symlinked location and copies whatever it points at into the output model; onnxq
    checks this itself rather than relying on the installed onnx version.
    """
    folder = path.parent.resolve()
    files: dict[Path, int] = {}
    for tensor in all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = _external_entries(tensor)
        location = entries.get("location", "")
        name = printable(tensor.name)
        if not location or os.path.isabs(location) or ".." in Path(location).parts:
            raise OnnxqError(f"{path}: tensor {name!r} has external-data location {printable(location)!r}, which is "
                             "not a relative path inside the model's folder; refusing to read it")
        target = path.parent / location
        try:
            resolved = target.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise OnnxqError(f"external data of {path} cannot be read: {printable(location)} not found beside "
                             "the model") from exc
        if not resolved.is_relative_to(folder):
            raise OnnxqError(f"{path}: external-data location {printable(location)!r} leads out of the model's "
                             "folder (a symlink?); refusing to read it")
        if not resolved.is_file():
            raise OnnxqError(f"{path}: external-data location {printable(location)!r} is not a regular file")
        size = files.setdefault(resolved, resolved.stat().st_size)
        try:
            offset = int(entries.get("offset", 0) or 0)
            length = int(entries["length"]) if "length" in entries else size - offset
        except ValueError as exc:
            raise OnnxqError(f"{path}: tensor {name!r} has a non-numeric external-data offset or length") from exc
        if offset < 0 or length < 0 or offset + length > size:
            raise OnnxqError(f"{path}: tensor {name!r} reads bytes {offset}..{offset + length} of "
                             f"{printable(location)}, which has {size} bytes (truncated external data?)")
    return list(files)


def model_files(path: str | os.PathLike) -> list[Path]:
    """The files a model consists of: the .onnx file and its external-data files (for the output guard)."""
    path = Path(path)
    try:
        if not path.is_file():
            return [path]
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # an unreadable model: load_model names the problem later; guard the file itself
        return [path]
    files = {path}
    for tensor in all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = _external_entries(tensor).get("location")
            if location:
                files.add(path.parent / location)
    return sorted(files)


def printable(text: str) -> str:
    """``text`` with control characters escaped, for messages that show names read from a model or a file."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, from its dims and type (no serialization)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        length = _external_entries(tensor).get("length")
        if length and length.isdigit():
            return int(length)
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 8
    return count * max(itemsize, 1)


def estimated_size(model: onnx.ModelProto) -> int:
    """An upper estimate of the serialized size, from tensor sizes plus the graph's structure; never serializes
    the whole model (``ByteSize()`` itself fails past 2 GB)."""
    data = sum(tensor_nbytes(t) for t in all_tensors(model))
    return data + 256 * (len(model.graph.node) + len(model.graph.value_info)) + 64 * 1024


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Past the protobuf limit, or holding weights still on disk (a large model loaded by :func:`load_model`)."""
    return estimated_size(model) > EXTERNAL_DATA_THRESHOLD or any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def check_model(model: onnx.ModelProto, what: str = "model", full: bool = False) -> None:
    """Run the ONNX checker (``full`` adds strict shape inference); failures are errors, not warnings.

    A model past the protobuf limit cannot be handed to the checker whole (it serializes it): its :func:`skeleton`
    is checked instead (the same graph, nodes, types and shapes, its large weights declared as typed inputs), with
    no copy of the weights; files on disk are checked by path (:func:`load_model`, ``benchmarks/large_model.py``).
    The in-memory model is never modified."""
    try:
        if needs_external_data(model):
            onnx.checker.check_model(skeleton(model), full_check=full)
        else:
            onnx.checker.check_model(model, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxqError(f"{what} fails the ONNX checker: {printable(first_line)}") from exc


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, input_path: str | os.PathLike | None = None,
               group: AtomicGroup | None = None) -> Path:
    """Write ``model`` to ``path`` atomically; past the protobuf limit the weights go to ``<name>.data`` beside it.

    With ``group`` the files are only staged; they appear when the group commits (so a command's outputs appear
    together or not at all). The in-memory model is never modified."""
    path = Path(path)
    if input_path is not None:
        check_outputs(model_outputs("-o", path), {"the input model": model_files(input_path)})
    own_group = group is None
    group = group or AtomicGroup()
    try:
        if needs_external_data(model):
            data_path = external_data_path(path)
            model_tmp = group.temp_for(path)
            data_tmp = group.temp_for(data_path)
            write_model_files(model, model_tmp, data_tmp, data_path.name)
        else:
            group.write_bytes(path, model.SerializeToString(deterministic=True))
    except BaseException:
        group.abort()
        raise
    if own_group:
        with group:
            pass
    return path


def model_outputs(flag: str, path: str | os.PathLike) -> list[Output]:
    """A model output and the external-data file that may be written beside it, for the output guard."""
    if path is None or not str(path).strip():
        return [Output(flag, path)]
    return [Output(flag, path), Output(f"{flag} (its external data)", external_data_path(Path(path)))]


def external_data_path(path: Path) -> Path:
    """Where :func:`save_model` puts the weights of a model past the protobuf limit: ``<path>.data``."""
    return path.with_name(path.name + ".data")


def _copy_fields(src, dst, skip: str) -> None:
    """Copy every set field of message ``src`` into ``dst`` except ``skip`` (no copy of the skipped field)."""
    for desc, value in src.ListFields():
        if desc.name == skip:
            continue
        if desc.is_repeated:
            getattr(dst, desc.name).extend(value)
        elif desc.type == desc.TYPE_MESSAGE:
            getattr(dst, desc.name).CopyFrom(value)
        else:
            setattr(dst, desc.name, value)


def write_model_files(model: onnx.ModelProto, model_file: str, data_file: str, location: str,
                      extra_outputs: Iterable[str] = ()) -> None:
    """Write ``model`` as a small .onnx file plus one external-data file, tensor by tensor.

    Unlike ``onnx.save(..., save_as_external_data=True)`` this neither modifies ``model`` nor serializes it whole,
    so it works past 2 GB and holds at most one tensor's bytes in memory besides the model."""
    header = onnx.ModelProto()
    _copy_fields(model, header, skip="graph")
    _copy_fields(model.graph, header.graph, skip="initializer")
    present = {o.name for o in header.graph.output}
    header.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(extra_outputs) if n not in present)
    offset = 0
    with open(data_file, "wb") as data:
        for tensor in model.graph.initializer:
            nbytes = tensor_nbytes(tensor)
            external = tensor.data_location == onnx.TensorProto.EXTERNAL
            if not external and (nbytes < EXTERNAL_TENSOR_MIN_BYTES or tensor.data_type == onnx.TensorProto.STRING):
                header.graph.initializer.add().CopyFrom(tensor)
                continue
            raw = tensor_bytes(tensor)
            pad = -offset % EXTERNAL_DATA_ALIGNMENT
            data.write(b"\0" * pad)
            offset += pad
            data.write(raw)
            stub = header.graph.initializer.add()
            _copy_fields(tensor, stub, skip="raw_data")
            for field_name in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                stub.ClearField(field_name)
            _set_external(stub, location, offset, len(raw))
            offset += len(raw)
            del raw
    with open(model_file, "wb") as f:
        f.write(header.SerializeToString(deterministic=True))


def skeleton(model: onnx.ModelProto, max_tensor_bytes: int | None = None) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers past ``max_tensor_bytes`` are declared as typed graph inputs instead
    (no data): enough for shape inference and the version converter, and small whatever the model's size."""
    if max_tensor_bytes is None:
        max_tensor_bytes = min(1024**2, EXTERNAL_DATA_THRESHOLD // 64)
    out = onnx.ModelProto()
    _copy_fields(model, out, skip="graph")
    _copy_fields(model.graph, out.graph, skip="initializer")
    declared = {v.name for v in out.graph.input}
    for tensor in model.graph.initializer:
        if tensor_nbytes(tensor) < max_tensor_bytes:
            out.graph.initializer.add().CopyFrom(tensor)
        elif tensor.name not in declared:
            out.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return out


@contextlib.contextmanager
def model_on_disk(model: onnx.ModelProto, workdir: str | None = None,
                  extra_outputs: Iterable[str] = ()) -> Iterator[str]:
    """A temporary .onnx path holding ``model`` with external data (for onnxruntime and the checker by path), with
    ``extra_outputs`` appended to its graph outputs; removed on exit. ``model`` itself is not changed."""
    with tempfile.TemporaryDirectory(prefix="onnxq-model-", dir=workdir) as tmp:
        path = os.path.join(tmp, "model.onnx")
        write_model_files(model, path, os.path.join(tmp, "model.onnx.data"), "model.onnx.data", extra_outputs)
        yield path


def fingerprint(model: onnx.ModelProto) -> str:
    """A short hash of the graph's structure and weight shapes, to recognise statistics of another model."""
    h = hashlib.sha256()
    graph = model.graph
    for value in graph.input:
        h.update(value.name.encode())
    for node in graph.node:
        h.update(f"{node.op_type}|{','.join(node.input)}|{','.join(node.output)}\n".encode())
    for init in graph.initializer:
        h.update(f"{init.name}:{init.data_type}:{tuple(init.dims)}\n".encode())
    return h.hexdigest()[:16]


def default_opset(model: onnx.ModelProto) -> int:
    """The model's ai.onnx opset version."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    raise OnnxqError("model has no default-domain (ai.onnx) opset import")


def node_name(node: onnx.NodeProto) -> str:
    """The name onnxq knows a node by: its ``name``, or its first output's name when the exporter left it empty
    (ONNX allows unnamed nodes; output names are unique in a graph)."""
    return node.name or node.output[0]


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of a node attribute, or ``default`` when the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def count_qdq(model: onnx.ModelProto) -> int:
    """How many QuantizeLinear/DequantizeLinear nodes the main graph holds."""
    return sum(node.op_type in QDQ_OPS for node in model.graph.node)


@dataclass
class GraphIndex:
    """Producers, consumers and initializers of a graph's tensors (the main graph only; subgraphs stay opaque)."""

    graph: onnx.GraphProto
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = field(default_factory=dict)
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    graph_inputs: set[str] = field(default_factory=set)
    graph_outputs: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, graph: onnx.GraphProto) -> GraphIndex:
        """The index of ``graph`` as it is now (rebuild it after changing the graph)."""
        index = cls(graph)
        index.initializers = {init.name: init for init in graph.initializer}
        index.graph_inputs = {v.name for v in graph.input if v.name not in index.initializers}
        index.graph_outputs = {v.name for v in graph.output}
        for node in graph.node:
            for out in node.output:
                if out:
                    index.producer[out] = node
            for i, name in enumerate(node.input):
                if name:
                    index.consumers.setdefault(name, []).append((node, i))
            for name in subgraph_outer_references(node):
                index.consumers.setdefault(name, []).append((node, -1))
        return index

    def array(self, name: str) -> np.ndarray:
        """The value of initializer ``name``."""
        return tensor_array(self.initializers[name])

    def is_initializer(self, name: str) -> bool:
        """Whether ``name`` is an initializer of the graph."""
        return name in self.initializers

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The one node reading ``name``, or None when several (or none) do or it is a graph output."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.graph_outputs:
            return None
        return users[0][0]


def node_reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor a node reads: its named inputs and what its subgraphs read from the enclosing scope."""
    return {name for name in node.input if name} | subgraph_outer_references(node)


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """A node's subgraphs (If branches, Loop/Scan bodies), in attribute order."""
    found: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            found.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            found.extend(attr.graphs)
    return found


def subgraph_outer_references(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing scope."""
    names: set[str] = set()
    for sub in subgraphs(node):
        local = {i.name for i in sub.input} | {i.name for i in sub.initializer}
        for inner in sub.node:
            local.update(inner.output)
        for inner in sub.node:
            names.update(n for n in inner.input if n and n not in local)
            names.update(n for n in subgraph_outer_references(inner) if n not in local)
        names.update(o.name for o in sub.output if o.name not in local)
    return names


def recorded_ranks(graph: onnx.GraphProto) -> dict[str, int]:
    """The rank of every tensor of ``graph`` whose shape its signature or shape inference recorded (value_info)."""
    return {v.name: len(v.type.tensor_type.shape.dim) for v in (*graph.input, *graph.value_info, *graph.output)
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}


def remove_nodes(graph: onnx.GraphProto, removed: set[int]) -> None:
    """Drop the nodes whose ``id()`` is in ``removed`` from ``graph``, keeping the order of the rest."""
    kept = [n for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(kept)


def remove_initializers(graph: onnx.GraphProto, names: set[str]) -> None:
    """Delete the initializers named ``names`` where they are, without re-adding the others: ``del
    graph.initializer[:]`` followed by ``extend(kept)`` copies every kept weight (measured: a second copy of 0.75
    GB of weights that protobuf's arena never gives back)."""
    for i in reversed([i for i, t in enumerate(graph.initializer) if t.name in names]):
        del graph.initializer[i]


def unique_name(taken: set[str], base: str) -> str:
    """``base`` if free, else ``base_1``, ``base_2``...; the chosen name is added to ``taken``."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name in the main graph (to make new names unique)."""
    names = {v.name for v in graph.input} | {v.name for v in graph.output} | {i.name for i in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names
