"""Graph passes, one per file. :func:`prepare_passes` lists the float-to-float passes run before planning."""

from __future__ import annotations

from onnxq.passes.base import FunctionalPass, InPlacePass, Pass, PassManager, PassResult
from onnxq.passes.batchnorm_to_mul_add import BatchNormToMulAdd
from onnxq.passes.constants_to_initializers import ConstantsToInitializers
from onnxq.passes.fold_batchnorm import FoldBatchNorm
from onnxq.passes.fold_bias_add import FoldBiasAdd
from onnxq.passes.infer_shapes import InferShapes
from onnxq.passes.strip_qdq import StripQDQ
from onnxq.passes.unique_node_names import UniqueNodeNames
from onnxq.passes.upgrade_opset import UpgradeOpset
from onnxq.passes.widen_float16 import WidenFloat16


def prepare_passes(*, per_channel: bool = True, strip_qdq: bool = False, min_opset: int = 13) -> list[Pass]:
    """Float in, float out, numerically equal: what runs before the plan is built. ``min_opset`` is what the
    run's formats need (19 for fp8, 21 for block-wise int4; :meth:`onnxq.config.QuantConfig.min_opset`)."""
    passes: list[Pass] = [UniqueNodeNames(), *([StripQDQ()] if strip_qdq else [])]
    if per_channel or min_opset > 13:
        passes.append(UpgradeOpset(min_opset))
    passes += [ConstantsToInitializers(), WidenFloat16(), FoldBiasAdd(), FoldBatchNorm(), BatchNormToMulAdd(),
               InferShapes()]
    return passes


__all__ = ["BatchNormToMulAdd", "ConstantsToInitializers", "FoldBatchNorm", "FoldBiasAdd", "FunctionalPass",
           "InPlacePass", "InferShapes", "Pass", "PassManager", "PassResult", "StripQDQ", "UniqueNodeNames",
           "UpgradeOpset", "WidenFloat16", "prepare_passes"]
