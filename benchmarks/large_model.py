"""Quantize a generated model whose weights pass protobuf's 2 GB limit, end to end through the CLI, and print the
wall time and peak RSS of the quantize process.

The model: ``--layers`` MatMul(+bias Add)+Relu blocks of ``--width`` x ``--width`` float32 weights, plus a 1x1
Conv+BatchNormalization head (so the prepare passes have something to fold), saved with external data. It is
generated straight into its ``.data`` file, tensor by tensor, so the generator itself never holds the model in
memory. The quantize run is a child process; its peak RSS comes from ``wait4`` (``ru_maxrss``), so the generator's
memory does not count.

    PYTHONPATH=$PWD python benchmarks/large_model.py --workdir /tmp/onnxq-large   # 9 x 8192^2: 2.25 GiB of weights
    PYTHONPATH=$PWD python benchmarks/large_model.py --layers 2 --width 2048       # a quick smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper


def external(name: str, dims: tuple[int, ...], data, location: str, offset: int) -> tuple[onnx.TensorProto, int]:
    """Append ``data`` (float32) to the open data file at a 4 KB-aligned offset; a TensorProto pointing at it."""
    pad = -offset % 4096
    data.write(b"\0" * pad)
    offset += pad
    tensor = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims))
    tensor.data_location = TensorProto.EXTERNAL
    return tensor, offset


def generate(folder: Path, layers: int, width: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    model_path, location = folder / "large.onnx", "large.onnx.data"
    nodes, inits = [], []
    x = "x"
    offset = 0
    with open(folder / location, "wb") as data:
        def add_tensor(name: str, array: np.ndarray) -> None:
            nonlocal offset
            tensor, offset = external(name, array.shape, data, location, offset)
            raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
            data.write(raw)
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += len(raw)
            inits.append(tensor)

        for i in range(layers):
            rows = []
            for start in range(0, width, 1024):  # the weight in slices: the generator stays small
                rows.append(rng.standard_normal((min(1024, width - start), width), dtype=np.float32)
                             * np.float32(np.sqrt(2.0 / width)))
            add_tensor(f"w{i}", np.concatenate(rows))
            del rows
            add_tensor(f"b{i}", (rng.standard_normal(width) * 0.1).astype(np.float32))
            nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"),
                      helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"a{i}"], name=f"bias{i}"),
                      helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}")]
            x = f"r{i}"
        channels = 16
        add_tensor("head_w", (rng.standard_normal((channels, width // 64, 1, 1)) * 0.1).astype(np.float32))
        for name, value in (("bn_g", rng.uniform(0.5, 1.5, channels)), ("bn_b", rng.standard_normal(channels) * 0.1),
                            ("bn_m", rng.standard_normal(channels) * 0.1), ("bn_v", rng.uniform(0.5, 2, channels))):
            add_tensor(name, value.astype(np.float32))
    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [-1, width // 64, 8, 8])
    inits.append(shape)
    nodes += [helper.make_node("Reshape", [x, "shape"], ["img"], name="to_image"),
              helper.make_node("Conv", ["img", "head_w"], ["c"], name="head"),
              helper.make_node("BatchNormalization", ["c", "bn_g", "bn_b", "bn_m", "bn_v"], ["y"], name="head_bn")]
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with open(model_path, "wb") as f:
        f.write(model.SerializeToString())
    onnx.checker.check_model(str(model_path))
    return model_path


def write_calib(folder: Path, width: int, batches: int, batch_size: int) -> Path:
    calib = folder / "calib"
    calib.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(batches):
        np.save(calib / f"{i:03d}.npy", rng.standard_normal((batch_size, width), dtype=np.float32))
    return calib


def quantize_measured(argv: list[str]) -> tuple[int, float, int, str]:
    """Run ``onnxq ARGV[:-1]`` in a child (log to ARGV[-1].log); exit code, wall seconds, peak RSS bytes, log."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: exec the CLI with stdout/stderr to a log file
        log = os.open(argv[-1] + ".log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.execve(sys.executable, [sys.executable, "-m", "onnxq.cli", *argv[:-1]], env)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    return code, seconds, usage.ru_maxrss * 1024, Path(argv[-1] + ".log").read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--calib-batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temporary folder)")
    parser.add_argument("--validate", action="store_true", help="also run --val (both models in onnxruntime)")
    parser.add_argument("--reuse", action="store_true", help="reuse a model already generated in --workdir")
    args = parser.parse_args()
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="onnxq-large-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        reuse = (folder / "large.onnx").exists() and (folder / "large.onnx.data").exists() and args.reuse
        model = folder / "large.onnx" if reuse else generate(folder, args.layers, args.width)
        calib = write_calib(folder, args.width, args.calib_batches, args.batch_size)
        weights = (folder / "large.onnx.data").stat().st_size
        what = "reused" if reuse else "generated"
        print(f"{what} {model} in {time.perf_counter() - start:.1f} s: weights {weights / 2**30:.2f} GiB "
              f"({args.layers} x {args.width}x{args.width} float32), .onnx file {model.stat().st_size} bytes")
        out = folder / "large.int8.onnx"
        argv = ["quantize", str(model), "--calib", str(calib), "-o", str(out)]
        if args.validate:
            argv += ["--val", str(calib)]
        code, seconds, rss, log = quantize_measured([*argv, str(folder / "quantize")])
        print(f"$ onnxq {' '.join(argv)}")
        print(log.rstrip())
        print(f"exit {code}; wall {seconds:.1f} s; peak RSS {rss / 2**30:.2f} GiB "
              f"({rss / weights:.2f}x the weights)")
        if code == 0:
            data = folder / "large.int8.onnx.data"
            extra = f" + {data.name} {data.stat().st_size / 2**30:.2f} GiB" if data.exists() else ""
            print(f"output: {out.name} {out.stat().st_size} bytes{extra}")
            onnx.checker.check_model(str(out), full_check=True)
            print("output passes onnx.checker.check_model(path, full_check=True)")
    finally:
        if args.workdir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
