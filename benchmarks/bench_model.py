"""The benchmark model: a ~5M-parameter detector-style CNN at 640x640, built in ONNX with numpy (no torch), and
its generated calibration/validation images. Shared by the benchmark scripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# (out channels, stride) of each Conv-BN-ReLU; residual pairs where stride is 1 and channels are unchanged
STAGES = [(32, 2), (32, 1), (64, 2), (64, 1), (64, 1), (128, 2), (128, 1), (128, 1), (256, 2), (256, 1), (256, 1),
          (384, 2), (384, 1), (384, 1)]
HEAD_CHANNELS = 16


def build_model(seed: int = 0, size: int = 640) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, cin = "images", 3
    for i, (cout, stride) in enumerate(STAGES):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (9 * cin))).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(rng.uniform(0.6, 1.4, cout).astype(np.float32), f"g{i}"),
                  numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"b{i}"),
                  numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"m{i}"),
                  numpy_helper.from_array(rng.uniform(0.5, 1.5, cout).astype(np.float32), f"v{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1],
                                   strides=[stride, stride]),
                  helper.make_node("BatchNormalization", [f"c{i}", f"g{i}", f"b{i}", f"m{i}", f"v{i}"], [f"n{i}"],
                                   name=f"bn{i}")]
        y = f"n{i}"
        if stride == 1 and cin == cout:
            nodes.append(helper.make_node("Add", [y, x], [f"res{i}"], name=f"add{i}"))
            y = f"res{i}"
        nodes.append(helper.make_node("Relu", [y], [f"r{i}"], name=f"relu{i}"))
        x, cin = f"r{i}", cout
    w = (rng.standard_normal((HEAD_CHANNELS, cin, 1, 1)) * np.sqrt(1.0 / cin)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, "head_w"))
    nodes.append(helper.make_node("Conv", [x, "head_w"], ["head"], name="head"))
    graph = helper.make_graph(nodes, "bench_cnn",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("head", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    return model


def parameter_count(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(i.dims)) for i in model.graph.initializer if i.name.startswith(("w", "head")))


def smooth_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Low-frequency random images (upsampled coarse noise plus fine noise), roughly natural-image statistics."""
    coarse = rng.standard_normal((n, 3, size // 32, size // 32)).astype(np.float32)
    img = np.repeat(np.repeat(coarse, 32, axis=2), 32, axis=3)
    return img + 0.3 * rng.standard_normal(img.shape).astype(np.float32)


def write_dataset(folder: Path, batches: int, batch: int, size: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(batches):
        np.save(folder / f"{i:03d}.npy", smooth_images(rng, batch, size))
    return folder


def prepare_workdir(workdir: Path, calib_batches: int = 32, val_batches: int = 4, size: int = 640) -> Path:
    """workdir/model.onnx, calib/, val/ (created once; reused when present)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "model.onnx").exists():
        onnx.save(build_model(size=size), workdir / "model.onnx")
    if not (workdir / "calib").exists():
        write_dataset(workdir / "calib", calib_batches, 1, size, seed=1)
    if not (workdir / "val").exists():
        write_dataset(workdir / "val", val_batches, 1, size, seed=2)
    return workdir
