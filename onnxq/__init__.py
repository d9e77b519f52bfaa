"""onnxq: quantize neural networks at the ONNX-graph level, after export.

    import onnxq
    result = onnxq.quantize("model.onnx", calib="calib/", output="model.int8.onnx")
    print("\\n".join(result.report.summary_lines()))
"""

from onnxq.calib.base import CalibOptions
from onnxq.config import NodeSetting, Overrides, QuantConfig
from onnxq.errors import OnnxqError
from onnxq.graph import load_model, save_model
from onnxq.pipeline import QuantizeResult, quantize

__version__ = "0.1.0"

__all__ = ["CalibOptions", "NodeSetting", "OnnxqError", "Overrides", "QuantConfig", "QuantizeResult",
           "load_model", "quantize", "save_model", "__version__"]
