"""Loading and saving ONNX models, and a read-only index of a graph's edges.

Loading never modifies the input file. Saving writes to a temporary file in the target folder and renames it into
place, refuses to overwrite the model it was read from, and moves weights to external data past 2 GB.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from onnxq.atomic import write_bytes_atomic
from onnxq.errors import OnnxqError

log = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2  # leave headroom under protobuf's 2 GB limit
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX model (with its external data) and check it; any problem is an :class:`OnnxqError`."""
    path = Path(path)
    if not path.exists():
        raise OnnxqError(f"model file not found: {path}")
    if path.is_dir():
        raise OnnxqError(f"expected an .onnx model file, got a directory: {path}")
    if path.stat().st_size == 0:
        raise OnnxqError(f"model file is empty: {path}")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise OnnxqError(f"{path} is not a readable ONNX model (truncated or not ONNX?): {exc}") from exc
    except (FileNotFoundError, onnx.checker.ValidationError) as exc:
        detail = exc.filename if isinstance(exc, FileNotFoundError) else str(exc).strip().splitlines()[0]
        raise OnnxqError(f"external data of {path} cannot be read: {detail}") from exc
    if not model.graph.node or not model.opset_import:
        raise OnnxqError(f"{path} is not an ONNX model: it has no graph nodes or no opset")
    check_model(model, what=str(path))
    return model


def check_model(model: onnx.ModelProto, what: str = "model", full: bool = False) -> None:
    """Run the ONNX checker (``full`` adds strict shape inference); failures are errors, not warnings."""
    try:
        if model.ByteSize() > EXTERNAL_DATA_THRESHOLD:
            with tempfile.TemporaryDirectory() as tmp:
                tmp_path = os.path.join(tmp, "model.onnx")
                onnx.save(model, tmp_path, save_as_external_data=True, location="model.data")
                onnx.checker.check_model(tmp_path, full_check=full)
        else:
            onnx.checker.check_model(model, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxqError(f"{what} fails the ONNX checker: {first_line}") from exc


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, input_path: str | os.PathLike | None = None) -> Path:
    """Write ``model`` to ``path`` atomically; weights go to ``<name>.data`` when the model passes 2 GB."""
    path = Path(path)
    if input_path is not None and _same_file(path, Path(input_path)):
        raise OnnxqError(f"refusing to overwrite the input model {input_path}; choose another output path with -o")
    if model.ByteSize() > EXTERNAL_DATA_THRESHOLD:
        return _save_with_external_data(model, path)
    return write_bytes_atomic(path, model.SerializeToString(deterministic=True))


def _save_with_external_data(model: onnx.ModelProto, path: Path) -> Path:
    """The weights to ``<name>.data`` and the graph to ``path``, each written to a temporary name and renamed."""
    if path.is_dir() or not path.parent.exists():
        raise OnnxqError(f"cannot write {path}: it is a directory or its folder does not exist")
    data_name = path.name + ".data"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_data = path.parent / f".{data_name}.tmp"
    try:
        model = onnx.ModelProto.FromString(model.SerializeToString())  # onnx.save mutates: keep the caller's
        onnx.save(model, tmp_name, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=tmp_data.name, size_threshold=1024)
        _relocate_external_data(tmp_name, tmp_data.name, data_name)
        os.replace(tmp_data, path.parent / data_name)
        os.replace(tmp_name, path)
    finally:
        for leftover in (tmp_name, tmp_data):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return path


def _relocate_external_data(model_file: str, old_location: str, new_location: str) -> None:
    model = onnx.load(model_file, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old_location:
                entry.value = new_location
    with open(model_file, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


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
        return numpy_helper.to_array(self.initializers[name])

    def is_initializer(self, name: str) -> bool:
        return name in self.initializers

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.graph_outputs:
            return None
        return users[0][0]


def subgraph_outer_references(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing scope."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in graphs:
            local = {i.name for i in sub.input} | {i.name for i in sub.initializer}
            for inner in sub.node:
                local.update(inner.output)
            for inner in sub.node:
                names.update(n for n in inner.input if n and n not in local)
                names.update(n for n in subgraph_outer_references(inner) if n not in local)
            names.update(o.name for o in sub.output if o.name not in local)
    return names


def unique_name(taken: set[str], base: str) -> str:
    """``base`` if free, else ``base_1``, ``base_2``...; the chosen name is added to ``taken``."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def all_names(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in graph.input} | {v.name for v in graph.output} | {i.name for i in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names
