"""The reference models: names, inputs and outputs, their synthetic task, metric and baseline. No torch here."""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxq.errors import OnnxqError

WEIGHTS_DIR = Path(__file__).parent / "weights"
SPLITS = {"train": 0, "calib": 1, "val": 2, "test": 3}
TORCH_HINT = "install it with pip install 'onnxq[torch]'"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    description: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    task_module: str  # onnxq.models.tasks.<...>
    batch_fn: str  # function in task_module: (rng, batch_size) -> (inputs, labels)
    metric_cls: str  # class in task_module
    net: str  # "module:Class" under onnxq.models.nets
    baseline: str  # what the trivial baseline is

    @property
    def task(self) -> Any:
        return importlib.import_module(f"onnxq.models.tasks.{self.task_module}")

    def make_batch(self, rng: np.random.Generator,
                   batch_size: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        return getattr(self.task, self.batch_fn)(rng, batch_size)

    def make_metric(self) -> Any:
        return getattr(self.task, self.metric_cls)()

    @property
    def metric_name(self) -> str:
        return getattr(self.task, self.metric_cls).name

    @property
    def higher_is_better(self) -> bool:
        return getattr(self.task, self.metric_cls).higher_is_better

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.pt"


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo(
            "pointnext", "point-cloud classification",
            "PointNeXt-S-style: set abstraction (kNN via TopK/Gather), InvResMLP, 8 procedural shapes",
            ("points",), ("logits",), "shapes", "make_batch", "Accuracy", "pointnext:PointNeXt", "chance, 1/8",
        ),
        ModelInfo(
            "centerpoint", "LiDAR BEV detection",
            "CenterPoint-PointPillars-style: SECOND backbone, SECFPN neck (ConvTranspose), CenterHead",
            ("pillars",), ("heatmap", "reg", "height", "dim", "rot"), "bev", "make_batch_lidar", "DetectionAP",
            "centerpoint:CenterPoint", "random heatmap scores",
        ),
        ModelInfo(
            "bevfusion", "camera+LiDAR BEV fusion detection",
            "BEVFusion-style: camera BEV + LiDAR BEV, ConvFuser, SECOND+SECFPN decoder, heatmap head",
            ("camera_bev", "lidar_bev"), ("heatmap", "reg", "height", "dim", "rot"), "bev", "make_batch_fusion",
            "DetectionAP",
            "bevfusion:BEVFusion", "random heatmap scores",
        ),
        ModelInfo(
            "vit", "monocular depth",
            "VGGT-style ViT: patch-embed Conv, camera/register tokens, 4 transformer blocks, DPT-style depth head",
            ("image",), ("depth",), "depth", "make_batch", "AbsRel", "vit:DepthViT",
            "per-pixel mean depth of the evaluation set",
        ),
    )
}


def list_models() -> list[ModelInfo]:
    return list(MODELS.values())


def get_model(name: str) -> ModelInfo:
    if name not in MODELS:
        raise OnnxqError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def data_rng(name: str, split: str, seed: int = 0) -> np.random.Generator:
    """The generator of one split of one model's data: independent across models, splits and seeds."""
    return np.random.default_rng([zlib.crc32(name.encode()), SPLITS[split], seed])


def import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise OnnxqError(f"the reference models need torch ({exc}); {TORCH_HINT}") from exc
    return torch


def build_network(name: str) -> Any:
    """A fresh (untrained) torch module of the model."""
    info = get_model(name)
    import_torch()
    module, cls = info.net.split(":")
    return getattr(importlib.import_module(f"onnxq.models.nets.{module}"), cls)()


def load_network(name: str, weights: str | Path | None = None) -> Any:
    """The torch module with its committed (or the given) weights, in eval mode, float32."""
    torch = import_torch()
    info = get_model(name)
    path = Path(weights) if weights is not None else info.weights_path
    if not path.is_file():
        raise OnnxqError(f"no weights for {name!r} at {path}; train them with "
                         f"python scripts/train_reference_models.py --models {name}")
    if path.stat().st_size > MAX_WEIGHTS_BYTES:
        raise OnnxqError(f"weights file {path} is {path.stat().st_size / 1e9:.1f} GB, more than a reference model's "
                         f"{MAX_WEIGHTS_BYTES / 1e9:.0f} GB limit; is it the right file?")
    net = build_network(name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for files that are not state_dicts
        raise OnnxqError(f"{path} is not a torch state_dict file: {_first_line(exc)}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OnnxqError(f"{path} is not a state_dict (a mapping of names to tensors) for {name!r}")
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        raise OnnxqError(f"{path} does not fit {name!r}: {_first_line(exc)}") from exc
    return net.eval()


MAX_WEIGHTS_BYTES = 2 * 1024**3


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def baseline_metric(name: str, labels: list[dict[str, np.ndarray]]) -> float:
    """The trivial baseline's metric on the given label batches."""
    info = get_model(name)
    metric = info.make_metric()
    if info.task_module == "shapes":
        return info.task.baseline()[0]
    if info.task_module == "bev":
        rng = np.random.default_rng(0)
        for lab in labels:
            metric.update(info.task.baseline_outputs(lab, rng), lab)
        return metric.compute()
    if info.task_module == "depth":
        mean = np.mean(np.concatenate([lab["depth"] for lab in labels]), axis=0, keepdims=True)
        for lab in labels:
            metric.update({"depth": np.broadcast_to(mean, lab["depth"].shape)}, lab)
        return metric.compute()
    raise AssertionError(info.task_module)


ProgressFn = Callable[[str], None]
