"""Staged runs (onnxq.recovery.staged) give the values of a full onnxruntime run, each stage once per batch."""

from __future__ import annotations

import numpy as np

from onnxq.config import QuantConfig
from onnxq.graph import node_name
from onnxq.pipeline import quantize
from onnxq.recovery.staged import StagedRun, node_stages
from onnxq.runtime import make_session
from tests.recovery.nets_recovery import image_batches, mobilenet_hardswish


def test_stages_reproduce_a_full_run_of_a_qdq_model() -> None:
    calib = image_batches(4, size=32, seed=2)
    model = quantize(mobilenet_hardswish(), calib=calib, config=QuantConfig()).model
    layers = [node_name(n) for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    stages = node_stages(model, layers)
    levels = {node_name(n): s for n, s in zip(model.graph.node, stages) if node_name(n) in layers}
    assert sorted(levels.values()) == list(range(1, len(layers) + 1))  # a chain: one layer per level
    wanted: dict[int, set[str]] = {}
    for node in model.graph.node:
        if node_name(node) in levels:
            wanted.setdefault(levels[node_name(node)] - 1, set()).add(node.input[0])
    staged = StagedRun(model, stages, wanted, calib)
    names = sorted(set().union(*wanted.values()))
    full = make_session(model, outputs=names)
    out_names = [o.name for o in full.get_outputs()]
    reference = [dict(zip(out_names, full.run(None, batch), strict=True)) for batch in calib]
    for stage in range(max(levels.values())):
        staged.run(stage)
        for number in range(len(calib)):
            for name in wanted.get(stage, ()):
                np.testing.assert_allclose(staged.value(number, name), reference[number][name], rtol=1e-5,
                                           atol=1e-5)
    # tensors no later stage reads are dropped
    assert all(set(store) == {"flat_dequantized"} for store in staged.stores), staged.stores[0].keys()
