"""Best-effort shape inference: fills ``value_info`` where it can and never fails the run.

Dynamic dimensions are normal in exported models; onnxruntime's ``quant_pre_process`` aborts on them with
"Incomplete symbolic shape inference". Here a failure is logged and the model goes on unchanged.
"""

from __future__ import annotations

import logging

import onnx

from onnxq.graph import needs_external_data, skeleton
from onnxq.passes.base import FunctionalPass, PassResult

log = logging.getLogger(__name__)


class InferShapes(FunctionalPass):
    name = "infer-shapes"

    def call(self, model: onnx.ModelProto) -> PassResult:
        before = len(model.graph.value_info)
        try:
            inferred = _infer(model)
        except Exception as exc:  # inference is advisory: any failure leaves the model as it was
            log.warning("shape inference failed, continuing without it: %s", str(exc).splitlines()[0])
            return PassResult(model, False, ["shape inference failed; continuing without it"])
        known = len(inferred.graph.value_info)
        return PassResult(inferred, known != before, [f"{known} tensor shapes known"])


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    if not needs_external_data(model):
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    # past the protobuf limit: infer on a skeleton whose large weights are typed inputs, copy the shapes back
    inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False, data_prop=True)
    known = {v.name for v in model.graph.initializer}
    del model.graph.value_info[:]
    model.graph.value_info.extend(v for v in inferred.graph.value_info if v.name not in known)
    return model
