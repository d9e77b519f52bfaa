"""Record what bias correction changed, so exported scales carry it (:mod:`onnxq.scales.rewrites`).

Bias correction (:mod:`onnxq.recovery.bias_correction`) rewrites float biases after the ranges were taken. The
scales do not depend on it, but the deployed model does, so a scales file replayed on the original float model
(``quantize --scales``), or the float model written beside a TensorRT cache (``export-scales --float-model``), must
get the same biases. What changed is found by comparing every Conv/Gemm's bias input (its name and its values)
before and after the correction, independently of how the correction was computed; each changed layer becomes a
:class:`~onnxq.scales.rewrites.BiasRewrite` appended to the model's record of float rewrites, after the channel
rewrites of equalization.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.graph import node_name
from onnxq.scales.rewrites import BiasRewrite, FloatRewrites, read_from_model, record_in_model, weights_digest

#: the layers whose bias input bias correction writes
BIASED_OPS = ("Conv", "Gemm")

BiasState = dict[str, tuple[str, bytes]]


def bias_state(model: onnx.ModelProto) -> BiasState:
    """For every Conv/Gemm (by node key), its bias input's name and the bytes of its value ("" / b"": none)."""
    inits = {i.name: i for i in model.graph.initializer}
    state: BiasState = {}
    for node in model.graph.node:
        if node.op_type not in BIASED_OPS:
            continue
        name = node.input[2] if len(node.input) > 2 else ""
        state[node_name(node)] = (name, inits[name].SerializeToString() if name in inits else b"")
    return state


def changed_biases(model: onnx.ModelProto, before: BiasState) -> list[BiasRewrite]:
    """A rewrite for every Conv/Gemm whose bias input is another tensor, or holds other values, than ``before``; in
    graph order (the order the correction writes them, so a replay names new initializers the same)."""
    inits = {i.name: i for i in model.graph.initializer}
    after = bias_state(model)
    changed = []
    for node in model.graph.node:
        key = node_name(node)
        if key not in after or after[key] == before.get(key) or after[key][0] not in inits:
            continue
        value = numpy_helper.to_array(inits[after[key][0]])
        changed.append(BiasRewrite(key, np.asarray(value, dtype=np.float32).reshape(-1)))
    return changed


def record_bias_rewrites(model: onnx.ModelProto, before: BiasState, digest_before: str) -> int:
    """Append the bias rewrites of ``model`` since ``before`` to its record of float rewrites (``digest_before``: its
    weights' digest before the correction, used when no earlier rewrite was recorded); returns how many."""
    rewrites = changed_biases(model, before)
    if not rewrites:
        return 0
    earlier = read_from_model(model)
    record = FloatRewrites((*(earlier.rewrites if earlier else ()), *rewrites),
                           earlier.weights_before if earlier else digest_before, weights_digest(model))
    record_in_model(model, record)
    return len(rewrites)
