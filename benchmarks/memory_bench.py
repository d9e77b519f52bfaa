"""Calibration memory stays bounded however many batches run: peak RSS of `onnxq calibrate` (histogram method) on
the 640x640 benchmark CNN for a growing number of calibration batches.

    python benchmarks/memory_bench.py [--batches 8 32 128] [--method percentile]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import build_model, write_dataset  # noqa: E402
from quantize_bench import run_measured  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).parent / "out" / "memory")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--method", default="percentile")
    args = ap.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    model = args.root / "model.onnx"
    if not model.exists():
        import onnx

        onnx.save(build_model(), model)
    data = args.root / "calib"
    if len(list(data.glob("*.npy"))) < max(args.batches):
        write_dataset(data, max(args.batches), 1, 640, seed=1)
    print(f"| batches | wall s | peak RSS MB |  ({args.method}, 1x3x640x640 per batch)")
    print("|---|---|---|")
    for n in args.batches:
        wall, peak_kb = run_measured([sys.executable, "-m", "onnxq.cli", "calibrate", str(model), "--calib", str(data),
                                      "--calib-batches", str(n), "--method", args.method,
                                      "-o", str(args.root / f"stats_{n}.npz")])
        print(f"| {n} | {wall:.1f} | {peak_kb / 1024:.0f} |", flush=True)


if __name__ == "__main__":
    main()
