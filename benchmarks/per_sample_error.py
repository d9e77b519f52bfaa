"""How the output error of quantized models is spread over the evaluation samples of a real model: is a low SQNR one
image or all of them?

    python benchmarks/per_sample_error.py ori QUANTIZED.onnx [QUANTIZED2.onnx ...]

For each quantized model (quantized from the benchmark model ``ori``/``det``/``rec``/``ppdet``/``pprec``/``ppcls`` of
``benchmarks/real_models.py``, e.g. with ``onnxq quantize MODEL --calib ~/.cache/onnxq-bench/data/ori/calib``), run
FP32 and INT8 on the model's evaluation set and print, for the first output: the SQNR over all samples (what
real_models.py reports), the SQNR without the worst sample, the median per-sample SQNR, the worst sample's index, its
share of the total squared error, and the reference and quantized outputs of that sample when they are short (class
probabilities). A probability output near a decision boundary turns a small logit error into a large probability
error, and one such image can set the whole set's SQNR.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from realdata import MODELS, ensure_dataset, model_path  # noqa: E402


def samples(folder: Path) -> list[dict[str, np.ndarray]]:
    """Every batch of the folder cut into single samples, in file order."""
    out = []
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        count = len(next(iter(arrays.values())))
        out += [{k: v[i:i + 1] for k, v in arrays.items()} for i in range(count)]
    return out


def db(signal: float, noise: float) -> float:
    return float("inf") if noise == 0 else 10 * np.log10(signal / noise)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=list(MODELS))
    parser.add_argument("quantized", nargs="+")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    _, evaluation = ensure_dataset(args.model)
    feeds = samples(evaluation)
    reference = ort.InferenceSession(str(model_path(args.model)), providers=["CPUExecutionProvider"])
    ref = [reference.run(None, f)[0].astype(np.float64) for f in feeds]
    signal = sum(float((r ** 2).sum()) for r in ref)
    print("| model | SQNR dB | without the worst sample | median per-sample | worst sample (share of error) |")
    print("|---|---:|---:|---:|---|")
    for path in args.quantized:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = [session.run(None, f)[0].astype(np.float64) for f in feeds]
        errors = np.array([float(((r - g) ** 2).sum()) for r, g in zip(ref, got, strict=True)])
        per_sample = [db(float((r ** 2).sum()), e) for r, e in zip(ref, errors, strict=True)]
        worst = int(errors.argmax())
        detail = f"#{worst} ({errors[worst] / errors.sum():.0%})"
        if ref[worst].size <= 8:
            fp32, int8 = (np.round(t[worst].ravel(), 3).tolist() for t in (ref, got))
            detail += f": FP32 {fp32} INT8 {int8}"
        print(f"| {Path(path).name} | {db(signal, errors.sum()):.2f} | "
              f"{db(signal - float((ref[worst] ** 2).sum()), errors.sum() - errors[worst]):.2f} | "
              f"{np.median(per_sample):.2f} | {detail} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
