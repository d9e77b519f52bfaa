"""Quantization-aware training on onnxq's plan (needs torch; nothing here is imported by core onnxq).

    from onnxq import qat
    qmodel = qat.prepare(model, example_inputs, calib=batches)  # export to ONNX, plan it with onnxq, insert the
                                                                 # matching fake quant in torch, PTQ initialisation
    qat.finetune(qmodel, loader, loss_fn, qat.FinetuneConfig(epochs=2, lr=1e-4))   # or your own training loop
    qat.export(qmodel, "model.onnx", "qat_scales.json")         # FP32 ONNX of the fine-tuned weights + scales
    # then: onnxq quantize model.onnx --scales qat_scales.json

Attributes are imported lazily, so importing ``onnxq.qat`` needs no torch until an attribute is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from onnxq.errors import OnnxqError

_EXPORTS = {
    "prepare": "onnxq.qat.api",
    "export": "onnxq.qat.api",
    "export_onnx": "onnxq.qat.api",
    "teacher_copy": "onnxq.qat.api",
    "verify": "onnxq.qat.api",
    "QATModel": "onnxq.qat.model",
    "ExportSpec": "onnxq.qat.model",
    "Mapping": "onnxq.qat.mapping",
    "finetune": "onnxq.qat.train",
    "FinetuneConfig": "onnxq.qat.train",
    "ConsoleProgress": "onnxq.qat.progress",
    "StepReport": "onnxq.qat.progress",
}

__all__ = ["ConsoleProgress", "ExportSpec", "FinetuneConfig", "Mapping", "QATModel", "StepReport", "export",
           "export_onnx", "finetune", "prepare", "teacher_copy", "verify"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxq.qat' has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        if exc.name == "torch":
            raise OnnxqError("onnxq.qat needs torch; install it with pip install 'onnxq[torch]'") from exc
        raise
