r"""onnxq: quantize neural networks at the ONNX-graph level, after export.

    import onnxq
    result = onnxq.quantize("model.onnx", calib="calib/", output="model.int8.onnx")
    print("\n".join(result.report.summary_lines()))

The public names are imported on first use (PEP 562 module ``__getattr__``), so ``import onnxq`` (and the command
line's ``--help``) does not load onnx, onnxruntime or numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from onnxq.version import __version__

_EXPORTS = {
    "CalibOptions": "onnxq.calib.base",
    "NodeSetting": "onnxq.config",
    "Overrides": "onnxq.config",
    "QuantConfig": "onnxq.config",
    "OnnxqError": "onnxq.errors",
    "load_model": "onnxq.graph",
    "save_model": "onnxq.graph",
    "QuantizeResult": "onnxq.pipeline",
    "quantize": "onnxq.pipeline",
}

__all__ = ["CalibOptions", "NodeSetting", "OnnxqError", "Overrides", "QuantConfig", "QuantizeResult",
           "__version__", "load_model", "quantize", "save_model"]

if TYPE_CHECKING:  # what type checkers and IDEs see
    from onnxq.calib.base import CalibOptions
    from onnxq.config import NodeSetting, Overrides, QuantConfig
    from onnxq.errors import OnnxqError
    from onnxq.graph import load_model, save_model
    from onnxq.pipeline import QuantizeResult, quantize


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
