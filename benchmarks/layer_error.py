"""Layer by layer, how far each tensor of Q/DQ models is from FP32 on one input: where does the error start?

    python benchmarks/layer_error.py det QUANTIZED.onnx [QUANTIZED2.onnx ...] [--constant 114] [--sample 0]

Runs the benchmark model (``benchmarks/real_models.py``'s names) in FP32 and each quantized model (Q/DQ form, at
onnxruntime optimization level 0 so every tensor of the float graph is still there) on one input: a constant image
(``--constant V``: every value V, e.g. det's letterbox padding 114) or evaluation sample ``--sample N``. For each
tensor of the float graph, in graph order, it prints the SQNR (dB) against FP32 of the value the quantized model
computes for it (``pre``) and of its dequantized copy when the model quantizes it (``dq``), side by side for the
models: the first layer where one model's error jumps ahead of another's is the suspect. The last column is the
tensor's FP32 range.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from per_sample_error import samples  # noqa: E402
from realdata import MODELS, ensure_dataset, model_path  # noqa: E402


def tensors(model, feed: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """The values of ``names`` (and the outputs) when ``model`` runs ``feed`` unoptimized."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    exposed = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in names if t not in exposed)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))


def dequantized_copies(model) -> dict[str, str]:
    """Float tensor -> the output of the DequantizeLinear after its QuantizeLinear."""
    quantized = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    return {quantized[n.input[0]]: n.output[0] for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in quantized}


def sqnr(reference: np.ndarray, value: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    noise = float(np.square(value.astype(np.float64) - reference).sum())
    return float("inf") if noise == 0 else float(10 * np.log10(float(np.square(reference).sum()) / noise))


def main(argv: list[str] | None = None) -> int:
    import onnx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=list(MODELS))
    parser.add_argument("quantized", nargs="+")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--constant", type=float, help="a constant input of this value (the first sample's shape)")
    source.add_argument("--sample", type=int, default=0, help="evaluation sample (default 0)")
    args = parser.parse_args(argv)
    feed = samples(ensure_dataset(args.model)[1])[args.sample]
    if args.constant is not None:
        feed = {k: np.full_like(v, args.constant) for k, v in feed.items()}
    reference = onnx.load(str(model_path(args.model)))
    order = [o for n in reference.graph.node for o in n.output if o]
    producer = {o: n.op_type for n in reference.graph.node for o in n.output}
    fp32 = tensors(reference, feed, order)
    runs = []
    for path in args.quantized:
        model = onnx.load(path)
        copies = dequantized_copies(model)
        runs.append((tensors(model, feed, [o for n in model.graph.node for o in n.output if o]), copies))
    print("| tensor | op | " + " | ".join(f"{Path(p).name}: pre / dq" for p in args.quantized) + " | FP32 range |")
    print("|---|---|" + "---:|" * len(args.quantized) + "---|")
    for name in order:
        cells = []
        for values, copies in runs:
            pre = f"{sqnr(fp32[name], values[name]):.2f}" if name in values else "-"
            dq = f"{sqnr(fp32[name], values[copies[name]]):.2f}" if name in copies else "-"
            cells.append(f"{pre} / {dq}")
        print(f"| {name} | {producer[name]} | " + " | ".join(cells) +
              f" | {fp32[name].min():.3g}..{fp32[name].max():.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
