"""``--smoothquant auto``: per tensor, the alpha (or none) with the least simulated INT8 output error of its MatMuls.

The net is BERT's pattern measured on all-MiniLM-L6-v2 (docs/real_models.md): a LayerNormalization whose output has
one outlier channel (about -60 on every token, the others within a few units) read by three MatMuls whose weight
rows for that channel are large too, so SmoothQuant at alpha 0.5 moves too little.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Literal

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxq.cli import build_parser
from onnxq.commands.common import config_from_args
from onnxq.config import QuantConfig, RecoveryOptions
from onnxq.pipeline import quantize
from onnxq.recovery.channel_scale import drop_unused_initializers
from onnxq.recovery.replay import replay_rewrites
from onnxq.recovery.stage import equalize
from onnxq.scales.rewrites import read_from_model
from onnxq.validate import metrics
from tests.helpers import assert_equivalent, init, make_model, op_types, run, run_cli

K, N, T = 128, 32, 16
OUTLIER = 5


def layernorm_model(outlier: bool = True) -> onnx.ModelProto:
    """x -> LayerNormalization (channel OUTLIER near -60 on every token when ``outlier``) -> three MatMuls (q, k, v)
    -> Add."""
    rng = np.random.default_rng(0)
    gamma = (1.0 + 0.5 * rng.random(K)).astype(np.float32)
    weights = {n: (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32) for n in ("wq", "wk", "wv")}
    beta = np.zeros(K, np.float32)
    if outlier:
        gamma[OUTLIER], beta[OUTLIER] = 16.0, -60.0
        for w in weights.values():
            w[OUTLIER] *= 2.0  # the outlier channel's weight row is large too (as in BERT)
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1),
             *(helper.make_node("MatMul", ["h", f"w{n}"], [n], name=n) for n in "qkv"),
             helper.make_node("Add", ["q", "k"], ["qk"], name="add1"),
             helper.make_node("Add", ["qk", "v"], ["y"], name="add2")]
    graph = helper.make_graph(nodes, "ln_mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", T, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [init("gamma", gamma), init("beta", beta),
                               *(init(n, w) for n, w in weights.items())])
    return make_model(graph)


def batches(count: int = 4, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((4, T, K)).astype(np.float32)} for _ in range(count)]


def sqnr_db(model: onnx.ModelProto, alpha: float | Literal["auto", "off"], data: list[dict[str, np.ndarray]],
            held: list[dict[str, np.ndarray]]) -> float:
    config = replace(QuantConfig(), recovery=RecoveryOptions(smoothquant_alpha=alpha))
    quantized = quantize(copy.deepcopy(model), data, config).model
    ref = np.concatenate([run(model, b)[0] for b in held]).astype(np.float64)
    got = np.concatenate([run(quantized, b)[0] for b in held]).astype(np.float64)
    return metrics.sqnr_db(ref, got)


def test_auto_beats_fixed_alpha_and_none_on_an_outlier_channel_and_stays_exact() -> None:
    model, data, held = layernorm_model(), batches(), batches(2, seed=7)
    smoothed = copy.deepcopy(model)
    notes = equalize(smoothed, data, RecoveryOptions(equalize=False, smoothquant_alpha="auto"))
    assert notes[0].startswith("SmoothQuant (alpha auto): 3 MatMul/Gemm input(s) of 1 tensor(s); alphas 0."), notes
    assert "none" not in notes[0]
    assert op_types(smoothed).count("Mul") == 1  # the three consumers share one Mul
    for batch in data + held:
        assert_equivalent(model, smoothed, batch, rtol=1e-5)
    none, half, auto = (sqnr_db(model, a, data, held) for a in ("off", 0.5, "auto"))
    assert auto > max(none, half) + 1.5, (none, half, auto)  # measured 33.2, 42.2, 44.5 dB


def test_auto_leaves_a_tensor_without_outliers_alone() -> None:
    model, data = layernorm_model(outlier=False), batches()
    smoothed = copy.deepcopy(model)
    notes = equalize(smoothed, data, RecoveryOptions(equalize=False, smoothquant_alpha="auto"))
    assert notes[0] == "SmoothQuant (alpha auto): 0 MatMul/Gemm input(s) of 1 tensor(s); alphas none x1", notes
    assert smoothed == model


def test_the_shared_mul_replays_from_the_record_to_the_same_graph() -> None:
    model, data = layernorm_model(), batches()
    smoothed = copy.deepcopy(model)
    equalize(smoothed, data, RecoveryOptions(equalize=False, smoothquant_alpha="auto"))
    record = read_from_model(smoothed)
    assert record is not None and len(record.rewrites) == 3
    replayed = copy.deepcopy(model)
    replay_rewrites(replayed, record, source="test", strict=True)
    drop_unused_initializers(replayed)
    assert replayed.graph == smoothed.graph


def test_cli_takes_auto_and_refuses_a_word_that_is_not(tmp_path) -> None:
    onnx.save(layernorm_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=np.concatenate([b["x"] for b in batches()]))
    ok = run_cli("quantize", tmp_path / "m.onnx", "--calib", tmp_path / "calib.npz", "--smoothquant", "auto",
                 "-o", tmp_path / "q.onnx")
    assert ok.returncode == 0 and "SmoothQuant (alpha auto): 3 MatMul/Gemm input(s) of 1 tensor(s)" in ok.stdout, ok
    bad = run_cli("quantize", tmp_path / "m.onnx", "--calib", tmp_path / "calib.npz", "--smoothquant", "often",
                  "-o", tmp_path / "r.onnx")
    assert bad.returncode == 2 and "auto" in bad.stderr and not (tmp_path / "r.onnx").exists()


@pytest.mark.parametrize(("target", "alpha", "smoothed"), [
    ("tensorrt", None, True),  # the target's default: auto
    ("tensorrt", "off", False),
    ("ort-cpu", None, True),  # with its Mul kept float (rule 3.22)
    ("ort-cpu", "off", False),
])
def test_the_default_is_the_targets(target, alpha, smoothed) -> None:
    config = QuantConfig(target=target, recovery=RecoveryOptions(smoothquant_alpha=alpha))
    result = quantize(layernorm_model(), batches(), config)
    notes = [n for n in result.report.prepare_notes if n.startswith("SmoothQuant")]
    assert bool(notes) == smoothed, result.report.prepare_notes
    if smoothed:
        assert notes[0].startswith("SmoothQuant (alpha auto): 3 MatMul/Gemm input(s) of 1 tensor(s)"), notes


def test_cli_off_and_none_turn_it_off() -> None:
    parse = build_parser().parse_args
    for word in ("off", "none"):
        args = parse(["quantize", "m.onnx", "--calib", "d", "--smoothquant", word])
        assert config_from_args(args).recovery.smoothquant("auto") is None
    assert config_from_args(parse(["quantize", "m.onnx", "--calib", "d"])).recovery.smoothquant("auto") == "auto"


def test_a_cnn_has_nothing_to_smooth() -> None:
    from tests.recovery.nets_recovery import image_batches
    from tests.recovery.test_bias_correction import silu_chain

    result = quantize(silu_chain(), image_batches(count=2, size=16, seed=1), QuantConfig())
    assert "SmoothQuant: nothing to smooth (no MatMul/Gemm input with a constant 2-D weight)" in \
        result.report.prepare_notes, result.report.prepare_notes


def test_tensors_without_outlier_channels_are_not_searched_and_the_pass_ends_early() -> None:
    from onnxq.recovery.channel_scale import ChannelTarget, channel_statistics
    from onnxq.recovery.smoothquant import has_outlier_channels

    read = []

    def counted(batches_):
        for batch in batches_:
            read.append(1)
            yield batch

    targets = [ChannelTarget("q", "h", -1)]
    for outlier, rows_read, batches_read in ((True, True, 2), (False, False, 1)):
        read.clear()
        ranges, rows = channel_statistics(layernorm_model(outlier), targets, counted(batches()), 1, rows=["h"],
                                          row_batches=2, keep_rows=has_outlier_channels)
        assert has_outlier_channels(ranges["h"]) == outlier
        assert ("h" in rows) == rows_read and len(read) == batches_read


def test_on_ort_cpu_the_smoothing_mul_stays_float_before_the_quantizer() -> None:
    """Rule 3.22: in the integer region, QLinearMul would quantize the LayerNorm output per tensor *before* the
    per-channel scaling that is there to fix its range."""
    model, data, held = layernorm_model(), batches(), batches(2, seed=7)
    result = quantize(copy.deepcopy(model), data, QuantConfig(target="ort-cpu"))
    producer = {o: n for n in result.model.graph.node for o in n.output}
    readers = {i: n for n in result.model.graph.node for i in n.input}
    mul = next(n for n in result.model.graph.node if n.op_type == "Mul")
    assert producer[mul.input[0]].op_type == "LayerNormalization"
    assert readers[mul.output[0]].op_type == "QuantizeLinear"
    got = np.concatenate([run(result.model, b)[0] for b in held]).astype(np.float64)
    off = quantize(copy.deepcopy(model), data, QuantConfig(target="ort-cpu",
                                                           recovery=RecoveryOptions(smoothquant_alpha="off"))).model
    ref = np.concatenate([run(model, b)[0] for b in held]).astype(np.float64)
    plain = np.concatenate([run(off, b)[0] for b in held]).astype(np.float64)
    assert metrics.sqnr_db(ref, got) > metrics.sqnr_db(ref, plain) + 3.0, (metrics.sqnr_db(ref, got),
                                                                             metrics.sqnr_db(ref, plain))


def with_depthwise_branch() -> onnx.ModelProto:
    """:func:`layernorm_model` and, on a second input, a depthwise Conv -> Relu -> 1x1 Conv branch (an
    equalization target and a Conv pair), as a CNN+transformer recognizer has both."""
    model = layernorm_model()
    rng = np.random.default_rng(3)
    graph = model.graph
    graph.input.append(helper.make_tensor_value_info("img", TensorProto.FLOAT, ["b", 8, 8, 8]))
    graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    graph.initializer.extend([init("wd", (rng.standard_normal((8, 1, 3, 3)) * np.linspace(0.1, 3, 8)[:, None, None,
                                                                                                    None]).astype(
                                  np.float32)),
                              init("wp", (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32))])
    graph.node.extend([helper.make_node("Conv", ["img", "wd"], ["d"], name="dw", group=8, pads=[1, 1, 1, 1]),
                       helper.make_node("Relu", ["d"], ["r"], name="relu"),
                       helper.make_node("Conv", ["r", "wp"], ["z"], name="pw")])
    return model


def test_with_equalization_targets_the_rows_come_from_the_same_single_float_pass(monkeypatch) -> None:
    """Equalization never changes a MatMul/Gemm input (stage.equalize), so the search reads its rows in the
    equalization pass: one float pass, and the same smoothing as without equalization."""
    import onnxq.recovery.channel_scale as channel_scale
    import onnxq.recovery.smoothquant as smoothquant

    passes = []
    original = channel_scale.channel_statistics

    def counted(*args, **kwargs):
        passes.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(channel_scale, "channel_statistics", counted)
    monkeypatch.setattr(smoothquant, "channel_statistics", counted)
    rng = np.random.default_rng(2)
    data = [{**b, "img": rng.standard_normal((4, 8, 8, 8)).astype(np.float32)} for b in batches()]
    records = {}
    for equalize_on in (True, False):
        passes.clear()
        config = QuantConfig(recovery=RecoveryOptions(equalize=equalize_on, smoothquant_alpha="auto",
                                                      bias_correction=False))
        record = read_from_model(quantize(copy.deepcopy(with_depthwise_branch()), data, config).model)
        assert record is not None and len(passes) == 1
        records[equalize_on] = {r.tensor: r.scale for r in record.rewrites if r.kind == "smoothquant"}
    assert set(records[True]) == {"h"} and set(records[False]) == {"h"}
    np.testing.assert_allclose(records[True]["h"], records[False]["h"], rtol=1e-6)
