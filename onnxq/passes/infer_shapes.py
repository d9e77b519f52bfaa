"""Best-effort shape inference: fills ``value_info`` where it can and never fails the run.

Dynamic dimensions are normal in exported models; onnxruntime's ``quant_pre_process`` aborts on them with
"Incomplete symbolic shape inference". Here a failure is logged and the model goes on unchanged.
"""

from __future__ import annotations

import logging
import os
import tempfile

import onnx

from onnxq.graph import EXTERNAL_DATA_THRESHOLD
from onnxq.passes.base import FunctionalPass, PassResult

log = logging.getLogger(__name__)


class InferShapes(FunctionalPass):
    name = "infer-shapes"

    def call(self, model: onnx.ModelProto) -> PassResult:
        try:
            inferred = _infer(model)
        except Exception as exc:  # inference is advisory: any failure leaves the model as it was
            log.warning("shape inference failed, continuing without it: %s", str(exc).splitlines()[0])
            return PassResult(model, False, ["shape inference failed; continuing without it"])
        known = len(inferred.graph.value_info)
        return PassResult(inferred, known != len(model.graph.value_info), [f"{known} tensor shapes known"])


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    if model.ByteSize() < EXTERNAL_DATA_THRESHOLD:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.onnx"), os.path.join(tmp, "out.onnx")
        onnx.save(model, src, save_as_external_data=True, location="in.data")
        onnx.shape_inference.infer_shapes_path(src, dst, strict_mode=False, data_prop=True)
        return onnx.load(dst, load_external_data=True)
