"""Reference models of 3D-perception families with seeded synthetic tasks, to exercise and measure onnxq.

Four small torch models, structurally faithful to their families, trained by ``scripts/train_reference_models.py``
and shipped as weights: ``pointnext`` (point-cloud classification), ``centerpoint`` (LiDAR BEV detection),
``bevfusion`` (camera + LiDAR BEV fusion detection) and ``vit`` (VGGT-style ViT, monocular depth).

Importing this package does not import torch; only exporting (which builds the torch module) needs it.
Evaluating an exported ONNX model needs numpy and onnxruntime only.
"""

from onnxq.models.evaluate import EvalResult, evaluate_onnx, load_data
from onnxq.models.export import ExportResult, export_model, write_data
from onnxq.models.registry import MODELS, ModelInfo, get_model, list_models

__all__ = [
    "MODELS",
    "EvalResult",
    "ExportResult",
    "ModelInfo",
    "evaluate_onnx",
    "export_model",
    "get_model",
    "list_models",
    "load_data",
    "write_data",
]
