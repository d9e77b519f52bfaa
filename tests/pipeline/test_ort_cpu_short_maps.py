"""A depthwise Conv whose kernel rows mostly read vertical padding at the deployment shape runs in float on ort-cpu,
with its HardSwish fused into the float Conv and its squeeze-and-excitation gate float too; on a tall map the same
block stays integer (docs/ort_cpu_rules.md 3.17). Read from the graph onnxruntime optimizes for a deployment
(``SessionOptions.optimized_model_filepath``), as in tests/pipeline/test_ort_cpu_fusion.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.config import QuantConfig
from onnxq.pipeline import quantize
from onnxq.short_maps import padded_row_share, short_map_depthwise
from onnxq.validate.latency import op_counts, optimized_model
from onnxq.validate.metrics import sqnr_db
from tests.helpers import make_model, normal_batches, run

MS = "com.microsoft."
CHANNELS = 32


def _weights(rng: np.random.Generator, name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def mobile_block(height: int | str, width: int = 48) -> onnx.ModelProto:
    """Conv 1x1 (8 -> 32) -> HardSwish -> depthwise 5x5 -> HardSwish -> squeeze-and-excitation (GlobalAveragePool,
    Conv 32 -> 8, Relu, Conv 8 -> 32, HardSigmoid, Mul) -> Conv 1x1 (32 -> 16) -> GlobalAveragePool, Flatten, Gemm
    (16 -> 4); input 1 x 8 x ``height`` x
    ``width`` (a string: a symbolic height)."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "w_expand", "b_expand"], ["e"], name="expand"),
             helper.make_node("HardSwish", ["e"], ["he"], name="hswish_expand"),
             helper.make_node("Conv", ["he", "w_dw", "b_dw"], ["d"], name="depthwise", group=CHANNELS,
                              kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
             helper.make_node("HardSwish", ["d"], ["hd"], name="hswish_dw"),
             helper.make_node("GlobalAveragePool", ["hd"], ["pooled"], name="se_pool"),
             helper.make_node("Conv", ["pooled", "w_se1", "b_se1"], ["s1"], name="se_conv1"),
             helper.make_node("Relu", ["s1"], ["r1"], name="se_relu"),
             helper.make_node("Conv", ["r1", "w_se2", "b_se2"], ["s2"], name="se_conv2"),
             helper.make_node("HardSigmoid", ["s2"], ["gate"], name="se_gate", alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["hd", "gate"], ["scaled"], name="se_mul"),
             helper.make_node("Conv", ["scaled", "w_project"], ["p"], name="project"),
             helper.make_node("GlobalAveragePool", ["p"], ["g"], name="head_pool"),
             helper.make_node("Flatten", ["g"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "w_head"], ["y"], name="head")]
    inits = [_weights(rng, "w_expand", CHANNELS, 8, 1, 1), _weights(rng, "b_expand", CHANNELS, scale=0.5),
             _weights(rng, "w_dw", CHANNELS, 1, 5, 5, scale=0.2), _weights(rng, "b_dw", CHANNELS, scale=0.5),
             _weights(rng, "w_se1", 8, CHANNELS, 1, 1), _weights(rng, "b_se1", 8, scale=0.1),
             _weights(rng, "w_se2", CHANNELS, 8, 1, 1), _weights(rng, "b_se2", CHANNELS, scale=0.1),
             _weights(rng, "w_project", 16, CHANNELS, 1, 1, scale=0.2), _weights(rng, "w_head", 16, 4)]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [1, 8, height, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def _kinds(optimized: onnx.ModelProto) -> dict[str, str]:
    """For each original node name that onnxruntime kept recognisable: the op it became (by output tensor)."""
    return {out: f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in optimized.graph.node
            for out in n.output}


@pytest.mark.parametrize(("kernel", "stride", "pads", "height", "expected"), [
    (5, 1, (2, 2), 2, 0.6),   # 2 rows: each output row reads 3 of 5 kernel rows from padding
    (5, 1, (2, 2), 3, 0.4),
    (3, 1, (1, 1), 6, 2 / 18),
    (5, 2, (2, 2), 6, 3 / 15),
    (5, 1, (2, 2), 14, 6 / 70),
])
def test_padded_row_share(kernel, stride, pads, height, expected):
    assert padded_row_share(kernel, stride, 1, *pads, height) == pytest.approx(expected)


def test_short_map_block_runs_float_with_fused_activations_and_float_gate():
    model = mobile_block(3)
    calib = normal_batches((1, 8, 3, 48), 4, seed=0)
    result = quantize(model, calib=calib, config=QuantConfig(target="ort-cpu"))
    float_nodes = {d.node for d in result.plan.nodes if not d.quantized}
    assert {"depthwise", "hswish_dw", "se_pool", "se_conv1", "se_relu", "se_conv2", "se_gate",
            "se_mul"} <= float_nodes
    assert {"expand", "project"}.isdisjoint(float_nodes)
    optimized = optimized_model(result.model)
    counts = op_counts(optimized)
    assert counts.get(MS + "QLinearConv") == 2  # expand and project only
    assert MS + "QLinearMul" in counts  # the expand's HardSwish, still integer
    convs = [n for n in optimized.graph.node if n.op_type in ("Conv", "FusedConv") and n.domain != ""]
    activations = {a.s.decode() for n in convs for a in n.attribute if a.name == "activation"}
    # MLAS runs the depthwise Conv with its HardSwish, and the gate's Convs with Relu and HardSigmoid, fused
    assert {"HardSwish", "Relu", "HardSigmoid"} <= activations
    assert "HardSwish" not in counts and "HardSigmoid" not in counts
    # the gate adds no conversion: one DQ into the island, one Q out of it (and the model's own input Q)
    assert counts.get("DequantizeLinear", 0) <= 2 and counts.get("QuantizeLinear") == 2
    val = normal_batches((1, 8, 3, 48), 2, seed=1)
    for feeds in val:
        assert sqnr_db(run(model, feeds)[0], run(result.model, feeds)[0]) > 25


def test_tall_map_block_stays_integer():
    model = mobile_block(16)
    result = quantize(model, calib=normal_batches((1, 8, 16, 48), 4, seed=0), config=QuantConfig(target="ort-cpu"))
    assert all(d.quantized for d in result.plan.nodes if d.op_type == "Conv")
    counts = op_counts(optimized_model(result.model))
    assert counts.get(MS + "QLinearConv") == 5 and counts.get(MS + "QLinearMul") >= 2


def test_symbolic_height_takes_the_calibration_shape():
    """PP-OCR's models leave height and width symbolic: the calibration batch's shape decides, and the output model
    keeps its symbolic input."""
    model = mobile_block("h", 48)
    short = quantize(model, calib=normal_batches((1, 8, 2, 48), 4, seed=0), config=QuantConfig(target="ort-cpu"))
    tall = quantize(model, calib=normal_batches((1, 8, 16, 48), 4, seed=0), config=QuantConfig(target="ort-cpu"))
    assert not next(d for d in short.plan.nodes if d.node == "depthwise").quantized
    assert next(d for d in tall.plan.nodes if d.node == "depthwise").quantized
    assert short.model.graph.input[0].type.tensor_type.shape.dim[2].dim_param == "h"
    # an explicit deployment shape overrides the data's
    given = QuantConfig(target="ort-cpu", input_shapes=(("x", (1, 8, 16, 48)),))
    assert next(d for d in quantize(model, calib=normal_batches((1, 8, 2, 48), 4, seed=0), config=given).plan.nodes
                if d.node == "depthwise").quantized


def test_tensorrt_target_is_unchanged():
    model = mobile_block(3)
    assert not short_map_depthwise(model, ()) == set()  # the block qualifies by shape ...
    result = quantize(model, calib=normal_batches((1, 8, 3, 48), 4, seed=0), config=QuantConfig(target="tensorrt"))
    assert next(d for d in result.plan.nodes if d.node == "depthwise").quantized  # ... but only ort-cpu acts on it


def test_cli_input_shape_flag(tmp_path):
    """``--input-shape NAME=DIMS`` sets the deployment shape; a malformed one is one line and exit 2, nothing
    written."""
    import onnx as onnx_module

    from tests.helpers import run_cli, write_batches

    model_path = tmp_path / "block.onnx"
    onnx_module.save(mobile_block("h", 48), model_path)
    write_batches(tmp_path / "calib", 2, (1, 8, 16, 48), np.random.default_rng(0))
    out = tmp_path / "q.onnx"
    bad = run_cli("quantize", model_path, "--calib", tmp_path / "calib", "--target", "ort-cpu", "-o", out,
                  "--input-shape", "x=1x8xhx48")
    assert bad.returncode == 2 and "--input-shape" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not out.exists()
    good = run_cli("quantize", model_path, "--calib", tmp_path / "calib", "--target", "ort-cpu", "-o", out,
                   "--input-shape", "x=1x8x2x48")
    assert good.returncode == 0, good.stderr
    depthwise = [n for n in onnx_module.load(out).graph.node if n.name == "depthwise"]
    assert depthwise and "w_dw" in depthwise[0].input  # float weights: the calibration batches (16 rows) did not decide


def test_statistics_workflow_follows_static_shapes_or_the_given_one(tmp_path):
    """``onnxq calibrate`` does not read the deployment shape from its shard's data: its statistics fit
    ``quantize --stats`` (which has no data) on the static shapes, and both take the same ``--input-shape``."""
    import onnx as onnx_module

    from tests.helpers import run_cli, write_batches

    model_path = tmp_path / "block.onnx"
    onnx_module.save(mobile_block("h", 48), model_path)
    write_batches(tmp_path / "calib", 2, (1, 8, 2, 48), np.random.default_rng(0))
    for shape, float_depthwise in (((), False), (("--input-shape", "x=1x8x2x48"), True)):
        stats, out = tmp_path / f"s{len(shape)}.npz", tmp_path / f"q{len(shape)}.onnx"
        r = run_cli("calibrate", model_path, "--calib", tmp_path / "calib", "--target", "ort-cpu", "-o", stats, *shape)
        assert r.returncode == 0, r.stderr
        r = run_cli("quantize", model_path, "--stats", stats, "--target", "ort-cpu", "-o", out, *shape)
        assert r.returncode == 0, r.stderr
        depthwise = next(n for n in onnx_module.load(out).graph.node if n.name == "depthwise")
        assert ("w_dw" in depthwise.input) == float_depthwise
