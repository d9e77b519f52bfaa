"""The level runner (onnxq.recovery.level_runner) gives the values of a full onnxruntime run, each needed node once
per batch, whether a step's values are taken after the update of the layers they depend on (finish) or before it
(finish_shifted), and keeps a cut tensor only while a later step reads it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxq.config import QuantConfig
from onnxq.graph import node_name, node_reads
from onnxq.pipeline import quantize
from onnxq.recovery.level_runner import ChannelShift, LevelRunner, Probe, Step, node_levels
from onnxq.runtime import make_session
from tests.helpers import init, make_model
from tests.recovery.nets_recovery import image_batches, mobilenet_hardswish

LAYERS = ["conv0", "conv1", "conv2"]


def residual_net(width: int = 4) -> onnx.ModelProto:
    """conv0 -> relu -> conv1 -> relu, plus a skip (relu0 * 0.5) added after conv1, then conv2: levels 1, 2, 3. Each
    Conv's weight ``wI`` and bias ``bI`` are graph inputs (parameters fed at run time, as the recovery callers do)."""
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Mul", ["r0", "half"], ["skip"], name="skip"),
             helper.make_node("Add", ["r1", "skip"], ["s"], name="add"),
             helper.make_node("Conv", ["s", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("ReduceMean", ["c2"], ["y"], name="head", keepdims=0)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])]
    for i, c_in in enumerate((3, width, width)):
        inputs += [helper.make_tensor_value_info(f"w{i}", TensorProto.FLOAT, [width, c_in, 3 if i < 2 else 1,
                                                                            3 if i < 2 else 1]),
                   helper.make_tensor_value_info(f"b{i}", TensorProto.FLOAT, [width])]
    graph = helper.make_graph(nodes, "residual", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [init("half", np.array(0.5, np.float32))])
    return make_model(graph)


def parameters(seed: int, width: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, (c_in, k) in enumerate(((3, 3), (width, 3), (width, 1))):
        out[f"w{i}"] = (rng.standard_normal((width, c_in, k, k)) * 0.4).astype(np.float32)
        out[f"b{i}"] = (rng.standard_normal(width) * 0.3).astype(np.float32)
    return out


def full_run(model: onnx.ModelProto, names: list[str], batch: dict[str, np.ndarray],
             feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = make_session(model, outputs=names)
    got = session.run(None, {**batch, **feed})
    return dict(zip([o.name for o in session.get_outputs()], got, strict=True))


def test_levels_count_the_layers_on_the_deepest_upstream_path() -> None:
    model = residual_net()
    levels = dict(zip((node_name(n) for n in model.graph.node), node_levels(model, LAYERS), strict=True))
    assert levels == {"conv0": 1, "relu0": 1, "conv1": 2, "relu1": 2, "skip": 1, "add": 2, "conv2": 3, "head": 3}


def test_after_update_steps_equal_full_runs_with_the_updated_layers() -> None:
    """GPTAQ's use: step L - 1 exposes the inputs of level L, computed with every earlier level already updated."""
    model, batches = residual_net(), image_batches(count=3, size=8, seed=4)
    inputs = {1: "x", 2: "r0", 3: "s"}  # level -> its layer's input
    runner = LevelRunner(model, batches, [Step(frozenset({inputs[level + 1]})) for level in range(3)])
    feed, updates = parameters(0), parameters(1)
    for step in range(3):
        runner.run(step, feed)
        runner.finish(step)
        for number, batch in enumerate(batches):
            want = full_run(model, [inputs[step + 1]], batch, feed)[inputs[step + 1]]
            np.testing.assert_array_equal(runner.value(number, inputs[step + 1]), want)
        feed = {**feed, f"w{step}": updates[f"w{step}"], f"b{step}": updates[f"b{step}"]}  # level step + 1 updated
    # every node the steps need ran in exactly one step; the head (nothing reads it) never ran
    ran = [node_name(n) for group in runner.step_nodes for n in group]
    assert sorted(ran) == sorted(["conv0", "relu0", "conv1", "relu1", "skip", "add"])
    assert runner.sessions == 2  # step 0 reads the batch's own input: no session


def test_cut_tensors_are_freed_when_no_later_step_reads_them() -> None:
    model, batches = residual_net(), image_batches(count=2, size=8, seed=4)
    runner = LevelRunner(model, batches, [Step(frozenset({"r0"})), Step(frozenset({"s"})), Step(frozenset({"c2"}))])
    feed = parameters(0)
    held = []
    for step in range(3):
        runner.run(step, feed)
        runner.finish(step)
        held.append([sorted(store) for store in runner.stores])
    # after step 0 r0 (read by conv1 and skip in step 1); after step 1 only s: r0 and the step's other tensors are
    # gone; after step 2 only what the caller reads now
    assert held == [[["r0"]] * 2, [["s"]] * 2, [["c2"]] * 2]
    for step, group in enumerate(runner.step_nodes):  # nothing stored that no later step or caller reads
        assert all(runner.last_read[t] > step or t in runner.steps[step].wanted
                   for n in group for t in n.output if t in runner.stores[0])


def test_a_last_run_drops_what_each_batch_consumed_at_once() -> None:
    model, batches = residual_net(), image_batches(count=2, size=8, seed=4)
    held = {}
    for last in (False, True):
        runner = LevelRunner(model, batches, [Step(frozenset({"r0"})), Step(frozenset({"s"}))])
        runner.run(0, parameters(0), last=last)
        runner.finish(0)
        runner.run(1, parameters(0), last=last)
        held[last] = [sorted(store) for store in runner.stores]  # before the step is finished
        runner.finish(1)
        assert [sorted(store) for store in runner.stores] == [["s"]] * 2
    assert held == {False: [["r0"]] * 2, True: [[]] * 2}  # r0: read by step 1 only; s: still pending


def channel_sum_probe(output: str, name: str) -> Probe:
    axes = init(f"{name}_axes", np.array([2, 3], np.int64))
    node = helper.make_node("ReduceSum", [output, axes.name], [f"{name}_sum"], keepdims=0)
    return Probe((node,), (axes,), (helper.make_tensor_value_info(f"{name}_sum", TensorProto.FLOAT, None),))


def test_before_update_steps_shifted_equal_full_runs_with_the_updated_biases() -> None:
    """Bias correction's use: step L measures level L's outputs (a probe of them) before their bias changes; the kept
    outputs then get the bias change, so later steps equal a run with the new biases."""
    model, batches = residual_net(), image_batches(count=3, size=8, seed=6)
    outputs = ["c0", "c1", "c2"]
    runner = LevelRunner(model, batches, [Step(probe=channel_sum_probe(c, c)) for c in outputs])
    feed = parameters(2)
    rng = np.random.default_rng(0)
    for step, output in enumerate(outputs):
        sums = runner.run(step, feed)
        for number, batch in enumerate(batches):
            want = full_run(model, [output], batch, feed)[output].sum(axis=(2, 3))
            np.testing.assert_allclose(sums[number][0], want, rtol=1e-5, atol=1e-4)
        shift = rng.standard_normal(4)
        feed = {**feed, f"b{step}": (feed[f"b{step}"] + shift).astype(np.float32)}
        runner.finish_shifted(step, {output: ChannelShift(shift, 1)})
        if step < 2:  # the kept outputs of the updated layer equal a run with its new bias
            for number, batch in enumerate(batches):
                np.testing.assert_allclose(runner.value(number, output), full_run(model, [output], batch, feed)[output],
                                           rtol=1e-5, atol=1e-5)


def test_a_step_run_again_keeps_the_values_of_its_last_run() -> None:
    model, batches = residual_net(), image_batches(count=2, size=8, seed=8)
    runner = LevelRunner(model, batches, [Step(frozenset({"r0"})), Step(frozenset({"s"}))])
    first, second = parameters(3), parameters(4)
    runner.run(0, first)
    runner.run(0, second)  # the same session with other parameters (bias correction, several levels per step)
    assert runner.sessions == 1
    runner.finish(0)
    runner.run(1, second)
    runner.finish(1)
    for number, batch in enumerate(batches):
        np.testing.assert_array_equal(runner.value(number, "s"), full_run(model, ["s"], batch, second)["s"])


def test_steps_run_and_finish_in_order() -> None:
    runner = LevelRunner(residual_net(), image_batches(count=1, size=8), [Step(frozenset({"r0"})),
                                                                          Step(frozenset({"s"}))])
    with pytest.raises(ValueError, match="out of order"):
        runner.run(1, parameters(0))
    with pytest.raises(ValueError, match="before it ran"):
        runner.finish(0)


def test_steps_reproduce_a_full_run_of_a_qdq_model() -> None:
    calib = image_batches(4, size=32, seed=2)
    model = quantize(mobilenet_hardswish(), calib=calib, config=QuantConfig()).model
    layers = [node_name(n) for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    levels = {node_name(n): s for n, s in zip(model.graph.node, node_levels(model, layers), strict=True)
              if node_name(n) in layers}
    assert sorted(levels.values()) == list(range(1, len(layers) + 1))  # a chain: one layer per level
    wanted: dict[int, set[str]] = {}
    for node in model.graph.node:
        if node_name(node) in levels:
            wanted.setdefault(levels[node_name(node)] - 1, set()).add(node.input[0])
    top = max(levels.values())
    runner = LevelRunner(model, calib, [Step(frozenset(wanted.get(s, ()))) for s in range(top)])
    names = sorted(set().union(*wanted.values()))
    full = make_session(model, outputs=names)
    out_names = [o.name for o in full.get_outputs()]
    reference = [dict(zip(out_names, full.run(None, batch), strict=True)) for batch in calib]
    for step in range(top):
        runner.run(step)
        runner.finish(step)
        for number in range(len(calib)):
            for name in wanted.get(step, ()):
                np.testing.assert_array_equal(runner.value(number, name), reference[number][name])
    # only what the caller reads now is kept
    assert all(set(store) == {"flat_dequantized"} for store in runner.stores), runner.stores[0].keys()
    # each node in one step, and only those the wanted tensors depend on (not the Gemm classifier)
    needed, ancestors = set(names), set()
    for node in reversed(model.graph.node):
        if any(out in needed for out in node.output):
            ancestors.add(node_name(node))
            needed |= node_reads(node)
    ran = [node_name(n) for group in runner.step_nodes for n in group]
    assert len(ran) == len(set(ran)) and set(ran) == ancestors and "fc" not in ancestors
