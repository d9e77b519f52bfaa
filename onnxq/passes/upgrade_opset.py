"""Upgrade the default-domain opset to at least 13, where QuantizeLinear/DequantizeLinear gain ``axis``.

Per-channel weight quantization needs the ``axis`` attribute of opset 13; onnxruntime's quantizer writes an invalid
model for an opset-12 input with per-channel weights. The ONNX version converter keeps the model numerically
equal (it rewrites e.g. Squeeze/Unsqueeze/Split attributes into inputs).
"""

from __future__ import annotations

import logging

import onnx
from onnx import version_converter

from onnxq.errors import OnnxqError
from onnxq.graph import default_opset
from onnxq.passes.base import FunctionalPass, PassResult

log = logging.getLogger(__name__)

MIN_QDQ_AXIS_OPSET = 13


class UpgradeOpset(FunctionalPass):
    name = "upgrade-opset"

    def __init__(self, min_opset: int = MIN_QDQ_AXIS_OPSET) -> None:
        self.min_opset = min_opset

    def call(self, model: onnx.ModelProto) -> PassResult:
        current = default_opset(model)
        if current >= self.min_opset:
            return PassResult(model, False)
        try:
            upgraded = version_converter.convert_version(model, self.min_opset)
        except Exception as exc:  # the converter raises bare RuntimeErrors for unsupported ops
            raise OnnxqError(
                f"cannot upgrade the model from opset {current} to {self.min_opset} (needed for per-channel "
                f"Q/DQ): {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}. "
                "Re-export at opset >= 13, or quantize weights per tensor with --per-tensor-weights"
            ) from exc
        # the converter may lower the IR version below what the original declared; keep the larger one
        # and at least the IR version the new opset needs (an IR-3 model would keep initializers-must-be-inputs)
        needed = onnx.helper.find_min_ir_version_for(list(upgraded.opset_import), ignore_unknown=True)
        upgraded.ir_version = max(upgraded.ir_version, model.ir_version, needed)
        return PassResult(upgraded, True, [f"opset {current} -> {self.min_opset}"])
