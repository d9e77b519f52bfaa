"""Test helpers: golden graphs from ONNX text, onnxruntime runs, numerical-equality assertions."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

IR_VERSION = 8  # understood by every onnxruntime we support


def make_model(graph: onnx.GraphProto, opset: int = 17) -> onnx.ModelProto:
    """A checked model; graph outputs declared without a shape get the inferred one."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = IR_VERSION
    inferred = onnx.shape_inference.infer_shapes(model).graph
    known = {v.name: v for v in list(inferred.value_info) + list(inferred.output)}
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape") and out.name in known:
            out.type.CopyFrom(known[out.name].type)
    onnx.checker.check_model(model)
    return model


def parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_equivalent(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict[str, np.ndarray],
                      rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Both models give the same outputs on ``feeds`` (relative tolerance ~1e-5, as the folding passes promise)."""
    for x, y in zip(run(a, feeds), run(b, feeds), strict=True):
        np.testing.assert_allclose(y, x, rtol=rtol, atol=atol * max(1.0, float(np.abs(x).max())))


def rng_feeds(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}


def normal_batches(shape: tuple[int, ...], count: int, seed: int, name: str = "x") -> list[dict[str, np.ndarray]]:
    """``count`` single-input batches of standard-normal float32 values of ``shape``."""
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


@dataclasses.dataclass(frozen=True)
class CliResult:
    """What a command-line run left behind (the fields tests read from subprocess.CompletedProcess)."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: object, cwd: str | os.PathLike | None = None) -> CliResult:
    """``onnxq ARGS`` in this process (``onnxq.cli.main``) with stdout and stderr captured; argparse's exits
    (``--help``, usage errors) become return codes as in a real process."""
    from onnxq.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


def write_batches(folder: str | os.PathLike, count: int, shape: tuple[int, ...], rng: np.random.Generator,
                  npz_key: str | None = None) -> None:
    """``count`` standard-normal float32 batches of ``shape`` as ``000.npy``... (or ``.npz`` under ``npz_key``)."""
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        batch = rng.standard_normal(shape).astype(np.float32)
        if npz_key is None:
            np.save(os.path.join(folder, f"{i:03d}.npy"), batch)
        else:
            np.savez(os.path.join(folder, f"{i:03d}.npz"), **{npz_key: batch})
