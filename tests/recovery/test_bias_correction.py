"""Bias correction on the Q/DQ model: after it, each quantized layer's per-channel output mean equals the FP32 one on
the calibration data (its definition), upstream quantization and corrections included."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxq.config import Overrides, QuantConfig, RecoveryOptions
from onnxq.graph import GraphIndex
from onnxq.pipeline import quantize
from onnxq.runtime import make_session
from onnxq.validate.metrics import ErrorAccumulator
from tests.helpers import init, make_model, run
from tests.recovery.nets_recovery import gemm_batches, gemm_model, image_batches

# the definition, every channel corrected (no significance gate), on the unshifted layers (the activation shift, on by
# default for tensorrt, moves the biases too: tests/recovery/test_activation_shift.py)
CORRECTED = QuantConfig(recovery=RecoveryOptions(bias_correction=True, bias_correction_batches=4,
                                                 bias_correction_samples=10**6, bias_correction_min_t=0.0,
                                                 bias_correction_output_heads=True, activation_shift=False))
PLAIN = QuantConfig(recovery=RecoveryOptions(bias_correction=False, activation_shift=False))


def channel_means(model: onnx.ModelProto, names: list[str], batches, axis: int = 1) -> dict[str, np.ndarray]:
    """Per-channel means of the tensors ``names`` over the batches, each batch weighted by its values (the
    definition bias correction matches)."""
    session = make_session(model, outputs=names)
    outs = [o.name for o in session.get_outputs()]
    sums: dict[str, np.ndarray] = {}
    counts = dict.fromkeys(names, 0)
    for batch in batches:
        for name, value in zip(outs, session.run(None, batch)):
            if name in counts:
                v = np.moveaxis(value.astype(np.float64), axis, -1).reshape(-1, value.shape[axis])
                sums[name] = sums.get(name, 0) + v.sum(axis=0)
                counts[name] += v.shape[0]
    return {name: sums[name] / counts[name] for name in names}


def test_the_mean_output_error_of_a_linear_layer_is_removed_exactly() -> None:
    model, batches = gemm_model(), gemm_batches(count=4)
    plain = quantize(model, calib=batches, config=PLAIN)
    corrected = quantize(model, calib=batches, config=CORRECTED)
    float_mean = channel_means(model, ["y"], batches)["y"]
    before = channel_means(plain.model, ["y"], batches)["y"] - float_mean
    after = channel_means(corrected.model, ["y"], batches)["y"] - float_mean
    assert np.abs(before).max() > 1e-2  # there was a shift to remove
    np.testing.assert_allclose(after, 0.0, atol=1e-5 * np.abs(float_mean).max())
    bias = GraphIndex.build(corrected.model.graph).array("b")
    np.testing.assert_allclose(bias - GraphIndex.build(model.graph).array("b"), -before, rtol=1e-4, atol=1e-5)
    assert "bias correction: 1 layer(s) in 1 level(s), 8 of 8 channel(s) significant, 2 pass(es) over 4 " \
        "calibration batch(es)" in corrected.report.prepare_notes
    assert GraphIndex.build(model.graph).array("b") is not None  # the input model is unchanged
    np.testing.assert_array_equal(GraphIndex.build(model.graph).array("b"),
                                  GraphIndex.build(gemm_model().graph).array("b"))


def test_a_shifted_linear_layer_is_corrected_to_the_float_mean_exactly_too() -> None:
    """With the activation shift (the tensorrt default) the correction measures the shifted float model, which is
    exact, so the quantized layer's mean output is FP32's again."""
    model, batches = gemm_model(), gemm_batches(count=4)
    shifted = quantize(model, calib=batches, config=QuantConfig(recovery=replace(CORRECTED.recovery,
                                                                                 activation_shift=True)))
    assert any(n.startswith("activation shift: 1 of 1") for n in shifted.report.prepare_notes)
    float_mean = channel_means(model, ["y"], batches)["y"]
    after = channel_means(shifted.model, ["y"], batches)["y"] - float_mean
    np.testing.assert_allclose(after, 0.0, atol=1e-5 * np.abs(float_mean).max())


def silu_chain(seed: int = 0, width: int = 8, depth: int = 2, bias: bool = True) -> onnx.ModelProto:
    """``depth`` x (Conv 3x3 -> SiLU as Sigmoid*Mul) then a 1x1 Conv head; one channel of each Conv has a large gain,
    so each symmetric INT8 activation range is set by tens while the SiLU tail [-0.28, 0] falls into a step or two."""
    rng = np.random.default_rng(seed)
    inits, nodes, x, c_in = [], [], "x", 3
    for i in range(depth):
        w = (rng.standard_normal((width, c_in, 3, 3)) * 0.4 + 0.15).astype(np.float32)
        w[0] *= 30.0
        inits.append(init(f"w{i}", w))
        inputs = [x, f"w{i}"]
        if bias:
            inits.append(init(f"b{i}", (rng.standard_normal(width) * 0.2 - 1.0).astype(np.float32)))
            inputs.append(f"b{i}")
        nodes += [helper.make_node("Conv", inputs, [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"], name=f"sig{i}"),
                  helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"a{i}"], name=f"silu{i}")]
        x, c_in = f"a{i}", width
    inits.append(init("wh", (rng.standard_normal((4, width, 1, 1)) * 0.3).astype(np.float32)))
    nodes.append(helper.make_node("Conv", [x, "wh"], ["y"], name="head"))
    graph = helper.make_graph(nodes, "silu_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  ["n", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def test_a_layer_is_corrected_for_the_quantization_and_correction_upstream() -> None:
    model, batches = silu_chain(depth=1, bias=False), image_batches(count=4, size=16, seed=5)
    corrected = quantize(model, calib=batches, config=CORRECTED)
    # both layers' channel means in the whole Q/DQ model equal FP32's: the head's correction saw conv0 quantized and
    # corrected (a conv without a bias got one)
    want = channel_means(model, ["c0", "y"], batches)
    got = channel_means(corrected.model, ["c0", "y"], batches)
    for name in ("c0", "y"):
        np.testing.assert_allclose(got[name], want[name], atol=2e-5 * np.abs(want[name]).max() + 1e-6)
    # the head alone (conv0 kept float) needs another correction: the sequential one accounts for conv0's shift
    alone = quantize(model, calib=batches, config=replace(CORRECTED, overrides=Overrides.from_flags(
        exclude_nodes=["^conv0$"])))
    with_upstream, local = (head_bias(q.model) for q in (corrected, alone))
    assert np.abs(with_upstream - local).max() > 0.05 * np.abs(local).max(), (with_upstream, local)


def head_bias(model: onnx.ModelProto) -> np.ndarray:
    head = next(n for n in model.graph.node if n.name == "head")
    return GraphIndex.build(model.graph).array(head.input[2])


def sqnr(model: onnx.ModelProto, quantized: onnx.ModelProto, batches) -> float:
    acc = ErrorAccumulator()
    for batch in batches:
        acc.add(run(model, batch)[0], run(quantized, batch)[0])
    return acc.sqnr_db


def test_bias_correction_raises_the_sqnr_of_a_silu_cnn() -> None:
    model = silu_chain(seed=2, depth=4)
    calib, val = image_batches(count=4, size=16, seed=11), image_batches(count=3, size=16, seed=21)
    plain = sqnr(model, quantize(model, calib=calib, config=PLAIN).model, val)
    corrected = sqnr(model, quantize(model, calib=calib, config=CORRECTED).model, val)
    # measured: 24.90 dB without, 26.50 dB with bias correction
    assert corrected > plain + 1.0, (plain, corrected)


def gemm_shift_model(k: int = 16, n: int = 8, seed: int = 0) -> onnx.ModelProto:
    """Gemm ``x -> fc`` with weights a step off the INT8 grid in the first half of the output rows (a quantization
    error the same for every sample: a real mean shift) and on it in the second half."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-100, 100, (n, k)).astype(np.float32) / 100.0
    w[:, 0] = 1.27  # every row's maximum: per-channel step 0.01, so the grid values are exact
    w[: n // 2, 1:] += 0.004  # 0.4 of a step: rounded back, every sample's output moves by -0.004 * sum(x[1:])
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [init("w", w), init("b", np.zeros(n, np.float32))])
    return make_model(graph)


def test_a_pure_noise_shift_is_left_alone_and_a_real_one_corrected_exactly() -> None:
    # the input quantization error is zero-mean noise in every output row; the rows off the weight grid add a real
    # shift (every sample's output moves the same way); the default gate keeps the latter only
    rng = np.random.default_rng(3)
    batches = [{"x": rng.uniform(0.0, 4.0, (8, 16)).astype(np.float32)} for _ in range(4)]
    model = gemm_shift_model()
    gated = quantize(model, calib=batches, config=QuantConfig(recovery=RecoveryOptions(
        bias_correction=True, bias_correction_samples=32, bias_correction_output_heads=True, activation_shift=False)))
    bias = GraphIndex.build(gated.model.graph).array(
        next(n for n in gated.model.graph.node if n.name == "fc").input[2])
    plain = quantize(model, calib=batches, config=PLAIN).model
    per_sample = np.concatenate([run(model, b)[0] - run(plain, b)[0] for b in batches]).astype(np.float64)
    shift = per_sample.mean(axis=0)
    t = np.abs(shift) / (per_sample.std(axis=0, ddof=1) / np.sqrt(len(per_sample)))
    significant = t >= RecoveryOptions().bias_correction_min_t
    assert significant[:4].all() and np.count_nonzero(~significant[4:]) >= 3, t  # the setting is as described
    np.testing.assert_allclose(bias[significant], shift[significant], rtol=1e-4)  # corrected exactly
    np.testing.assert_array_equal(bias[~significant], 0.0)  # left alone
    assert f"{np.count_nonzero(significant)} of 8 channel(s) significant" in " ".join(gated.report.prepare_notes)


def test_a_layer_feeding_only_an_uncorrected_matmul_is_left_alone() -> None:
    # silu_chain's head as a MatMul (no bias input: not corrected): the last Conv's correction has nothing downstream
    # to absorb the mean shift its activation then makes, so it is skipped; conv0 feeds conv1, a corrected layer
    model = silu_chain(seed=2, depth=2)
    head = next(n for n in model.graph.node if n.name == "head")
    model.graph.node.remove(head)
    wh = GraphIndex.build(model.graph).array("wh").reshape(4, 8).T.copy()
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == "wh"))
    model.graph.initializer.append(init("wh", wh))
    model.graph.node.extend([helper.make_node("Transpose", ["a1"], ["a1t"], name="to_nhwc", perm=[0, 2, 3, 1]),
                             helper.make_node("MatMul", ["a1t", "wh"], ["y"], name="head")])
    del model.graph.value_info[:]
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    batches = image_batches(count=4, size=16, seed=5)
    corrected = quantize(model, calib=batches, config=CORRECTED)
    note = next(n for n in corrected.report.prepare_notes if n.startswith("bias correction"))
    assert "1 layer(s) in 1 level(s)" in note and "1 left alone (they feed only uncorrected layers)" in note, note
    index = GraphIndex.build(corrected.model.graph)
    conv1 = next(n for n in corrected.model.graph.node if n.name == "conv1")
    np.testing.assert_array_equal(index.array(conv1.input[2]), GraphIndex.build(model.graph).array("b1"))


def test_a_layer_before_a_float_conv_is_corrected_when_a_corrected_layer_follows() -> None:
    """A Conv kept float in the trunk (--exclude-node, the mixed-precision search) adds no quantization error, and
    the corrected layer after it absorbs the mean shift that passes through it: the layer before it is corrected (on
    ddddocr det with 10 Convs float, 24.61 -> 28.14 dB). A float Conv that only the graph output follows still ends
    the walk: test_a_score_head_kept_float_is_a_head_too."""
    from onnxq.pipeline import build_plan, prepare
    from onnxq.recovery.bias_correction import feeding_uncorrected_layers, find_targets

    model, batches = silu_chain(seed=4, depth=3), image_batches(count=4, size=16, seed=5)
    config = replace(CORRECTED, overrides=Overrides.from_flags(exclude_nodes=["^conv1$"]))
    prepared, _ = prepare(model, config)
    plan = build_plan(prepared, config)
    targets, _ = find_targets(prepared, plan)
    assert [t.node for t in targets] == ["conv0", "conv2", "head"]
    assert feeding_uncorrected_layers(GraphIndex.build(prepared.graph), plan, targets) == set()
    corrected = quantize(model, calib=batches, config=config)
    note = next(n for n in corrected.report.prepare_notes if n.startswith("bias correction"))
    assert note.startswith("bias correction: 3 layer(s) in 3 level(s)") and "left alone" not in note, note
    # its definition still holds with the float Conv between: every corrected layer's channel means are FP32's
    want = channel_means(model, ["c0", "c2", "y"], batches)
    got = channel_means(corrected.model, ["c0", "c2", "y"], batches)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-4 * np.abs(want[name]).max() + 1e-5)
    conv0 = next(n for n in corrected.model.graph.node if n.name == "conv0")
    assert not np.array_equal(GraphIndex.build(corrected.model.graph).array(conv0.input[2]),
                              GraphIndex.build(model.graph).array("b0"))


def test_levels_run_in_segments_equal_levels_run_from_the_inputs() -> None:
    from onnxq.pipeline import prepare, ranges
    from onnxq.plan import build_plan
    from onnxq.recovery.bias_correction import correct_biases, find_targets

    model, batches = silu_chain(seed=2, depth=4), image_batches(count=3, size=16, seed=7)
    prepared, _ = prepare(model, PLAIN)
    plan = build_plan(prepared, PLAIN)
    table = ranges(prepared, plan, PLAIN, calib=batches, stats=None, scales=None, progress=None).table
    results = []
    for chunk in (1, 2, 99):  # one level per session (cached cut tensors) ... every level in one session
        copy = onnx.ModelProto()
        copy.CopyFrom(prepared)
        correction = correct_biases(copy, plan, table, batches, 3, min_t=0.0, chunk_levels=chunk, output_heads=True)
        assert correction.passes == 1 + 5  # the FP32 pass and one per level, whatever the sessions
        results.append(find_targets(copy, plan)[1])
    for other in results[1:]:
        for name, bias in results[0].items():
            np.testing.assert_allclose(other[name], bias, rtol=1e-5, atol=1e-6)


def test_bias_correction_takes_batches_until_they_hold_the_samples_asked_for() -> None:
    model, batches = gemm_model(), gemm_batches(count=4)  # 32 samples per batch
    notes = {samples: " ".join(quantize(model, calib=batches, config=QuantConfig(recovery=RecoveryOptions(
        bias_correction=True, bias_correction_samples=samples, bias_correction_output_heads=True))
    ).report.prepare_notes) for samples in (8, 33)}
    assert "over 1 calibration batch(es)" in notes[8] and "over 2 calibration batch(es)" in notes[33]
    # on by default for tensorrt and ort-cpu (TargetRules.bias_correction; on ort-cpu where the constant-region
    # correction is not kept, tests/pipeline/test_ort_cpu_padding.py), off with --no-bias-correction
    for target in ("tensorrt", "ort-cpu"):
        notes = quantize(model, calib=batches, config=QuantConfig(target=target)).report.prepare_notes
        assert "bias correction" in " ".join(notes), (target, notes)
    for target in ("tensorrt", "ort-cpu"):
        config = QuantConfig(target=target, recovery=RecoveryOptions(bias_correction=False))
        assert "bias correction" not in " ".join(quantize(model, calib=batches, config=config).report.prepare_notes)


def two_headed(seed: int = 3, score_convs: int = 2) -> onnx.ModelProto:
    """A SiLU trunk (silu_chain's conv0) read by a score head (``score_convs - 1`` x (Conv -> SiLU), then Conv ->
    Sigmoid: a detector's class logits) and a box head (Conv -> SiLU -> Conv, no squashing)."""
    model = silu_chain(seed=seed, depth=1)
    graph = model.graph
    graph.node.remove(next(n for n in graph.node if n.name == "head"))
    rng = np.random.default_rng(seed)
    for branch, convs in (("score", score_convs), ("box", 2)):
        x = "a0"
        for i in range(1, convs):
            graph.initializer.extend([
                init(f"{branch}_w{i}", (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32)),
                init(f"{branch}_b{i}", (rng.standard_normal(8) * 0.2).astype(np.float32))])
            graph.node.extend([
                helper.make_node("Conv", [x, f"{branch}_w{i}", f"{branch}_b{i}"], [f"{branch}_c{i}"],
                                 name=f"{branch}_conv{i}", pads=[1, 1, 1, 1]),
                helper.make_node("Sigmoid", [f"{branch}_c{i}"], [f"{branch}_s{i}"], name=f"{branch}_sig{i}"),
                helper.make_node("Mul", [f"{branch}_c{i}", f"{branch}_s{i}"], [f"{branch}_a{i}"],
                                 name=f"{branch}_silu{i}")])
            x = f"{branch}_a{i}"
        graph.initializer.extend([
            init(f"{branch}_w{convs}", (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32)),
            init(f"{branch}_b{convs}", (rng.standard_normal(4) * 0.2 - 3.0).astype(np.float32))])
        graph.node.append(helper.make_node("Conv", [x, f"{branch}_w{convs}", f"{branch}_b{convs}"],
                                           [f"{branch}_logits" if branch == "score" else branch],
                                           name=f"{branch}_conv{convs}"))
    graph.node.append(helper.make_node("Sigmoid", ["score_logits"], ["score"], name="scores"))
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("score", "box")])
    return model


def test_a_score_head_is_left_alone_up_its_branch() -> None:
    """Matching the mean of logits that a Sigmoid makes into scores moves the few objects' scores by the many
    background anchors' error (YOLOv8 DocLayNet: F1 vs FP32 0.975 -> 0.462); the score branch is left alone up to
    the trunk, which also feeds the corrected box branch. A SiLU's Sigmoid (it feeds a Mul) is no head."""
    model, batches = two_headed(), image_batches(count=4, size=16, seed=5)
    corrected = quantize(model, calib=batches, config=CORRECTED)
    note = next(n for n in corrected.report.prepare_notes if n.startswith("bias correction"))
    assert "3 layer(s)" in note and "2 left alone (they feed only uncorrected layers)" in note, note
    before, after = GraphIndex.build(model.graph), GraphIndex.build(corrected.model.graph)
    for name in ("score_b1", "score_b2"):
        np.testing.assert_array_equal(after.array(name), before.array(name))
    changed = [n.name for n in corrected.model.graph.node if n.name in ("conv0", "box_conv1", "box_conv2")
               and not np.array_equal(after.array(n.input[2]), before.array(n.input[2]))]
    assert changed, "the trunk and the box head are corrected"


def test_a_score_head_kept_float_is_a_head_too() -> None:
    """ort-cpu keeps YOLOv8's last head Convs float (they feed only the float tail); the score branch behind such a
    float logit Conv is left alone as if that Conv were quantized and skipped (on ort-cpu correcting it cut the
    detector's F1 vs FP32 from 0.985 to 0.907). Without the float head it is not: the Conv before an uncorrected
    layer is left alone, but nothing cascades."""
    from onnxq.pipeline import build_plan, prepare
    from onnxq.recovery.bias_correction import feeding_uncorrected_layers, find_targets

    model = two_headed(score_convs=3)
    config = replace(CORRECTED, overrides=Overrides.from_flags(exclude_nodes=["^score_conv3$"]))
    prepared, _ = prepare(model, config)
    plan = build_plan(prepared, config)
    targets, _ = find_targets(prepared, plan)
    index = GraphIndex.build(prepared.graph)
    assert feeding_uncorrected_layers(index, plan, targets) == {"score_conv1", "score_conv2"}
    assert feeding_uncorrected_layers(index, plan, targets, float_heads=False) == {"score_conv2"}
    corrected = quantize(model, calib=image_batches(count=4, size=16, seed=5), config=config)
    note = next(n for n in corrected.report.prepare_notes if n.startswith("bias correction"))
    assert "3 layer(s)" in note and "2 left alone (they feed only uncorrected layers)" in note, note
    before, after = GraphIndex.build(model.graph), GraphIndex.build(corrected.model.graph)
    for name in ("score_b1", "score_b2", "score_b3"):
        np.testing.assert_array_equal(after.array(name), before.array(name))
    # a float box Conv that nothing squashes is no head: the Conv before it is left alone, but the trunk that feeds
    # it is still corrected (the quantized score branch is a head and all three of its Convs are left alone)
    box_float = quantize(model, calib=image_batches(count=4, size=16, seed=5), config=replace(
        CORRECTED, overrides=Overrides.from_flags(exclude_nodes=["^box_conv2$"])))
    note = next(n for n in box_float.report.prepare_notes if n.startswith("bias correction"))
    assert "1 layer(s)" in note and "4 left alone" in note, note
    assert not np.array_equal(GraphIndex.build(box_float.model.graph).array("b0"), before.array("b0"))


def test_a_layer_writing_a_graph_output_is_left_alone_by_default() -> None:
    """Raw logits decoded outside the graph (a CTC recognizer's last Gemm): their channel means are over mostly blank
    steps, so matching them moves the class decisions (ddddocr common.onnx: letter case flipped); the layers before
    are still corrected. A Reshape between the layer and the output changes nothing; bias_correction_output_heads
    corrects it too."""
    model, batches = silu_chain(seed=2, depth=2), image_batches(count=4, size=16, seed=5)
    head = next(n for n in model.graph.node if n.name == "head")
    head.output[0] = "logits"
    model.graph.initializer.append(init("flat", np.array([0, 4, -1], np.int64)))
    model.graph.node.append(helper.make_node("Reshape", ["logits", "flat"], ["y"], name="flatten"))
    del model.graph.value_info[:]
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    config = QuantConfig(recovery=replace(CORRECTED.recovery, bias_correction_output_heads=False))
    left = quantize(model, calib=batches, config=config)
    note = next(n for n in left.report.prepare_notes if n.startswith("bias correction"))
    assert "2 layer(s)" in note and "1 output head(s) left alone" in note, note
    single = quantize(gemm_model(), calib=gemm_batches(count=2), config=config)  # its one layer is an output head
    assert "bias correction: nothing to correct (no quantized Conv/Gemm with a per-channel bias, 1 output head(s) " \
        "left alone)" in single.report.prepare_notes
    before, after = GraphIndex.build(model.graph), GraphIndex.build(left.model.graph)
    assert len(next(n for n in left.model.graph.node if n.name == "head").input) == 2  # no bias added
    for name in ("b0", "b1"):
        assert not np.array_equal(after.array(name), before.array(name)), name
    corrected = quantize(model, calib=batches, config=CORRECTED)
    assert len(next(n for n in corrected.model.graph.node if n.name == "head").input) == 3  # a bias added
    assert RecoveryOptions().bias_correction_output_heads is False


def test_when_onnxruntime_cannot_run_the_correction_the_quantization_goes_on_without_it(monkeypatch) -> None:
    """A default stage on every tensorrt run: a part model onnxruntime refuses (an odd graph) leaves the biases as
    they are and the report says why, instead of failing the quantization."""
    import onnxq.recovery.level_runner as level_runner
    from onnxq.errors import OnnxqError

    model, batches = silu_chain(seed=2, depth=2), image_batches(count=4, size=16, seed=5)
    plain = quantize(model, calib=batches, config=QuantConfig(recovery=RecoveryOptions(bias_correction=False))).model

    def refuse(*args, **kwargs):
        raise OnnxqError("onnxruntime cannot load the model: [ONNXRuntimeError] a part it cannot run")

    monkeypatch.setattr(level_runner, "make_session", refuse)
    result = quantize(model, calib=batches)
    assert "bias correction skipped: onnxruntime cannot load the model: [ONNXRuntimeError] a part it cannot run" \
        in result.report.prepare_notes
    assert result.model.SerializeToString() == plain.SerializeToString()  # nothing half-corrected
