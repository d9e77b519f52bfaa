"""Time ``onnxq compare`` against quantizing each format separately (each with its own calibration and validation).

    PYTHONPATH=$PWD python benchmarks/compare_formats.py MODEL --calib DATA --val DATA [--formats ...]

The issue's bar: compare <= 1.5 x (sum of the separate quantizations - the repeated calibrations), i.e. against
separate runs that would share one calibration. Runs are sequential in one process, side by side; prints seconds.
"""

from __future__ import annotations

import argparse
import time

from onnxq.compare.run import DEFAULT_FORMATS, CompareOptions, compare_formats, format_config
from onnxq.config import QuantConfig
from onnxq.formats import parse_format
from onnxq.pipeline import quantize


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--calib", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--formats", default=",".join(DEFAULT_FORMATS))
    ap.add_argument("--per-layer", action="store_true",
                    help="separate runs also compute per-layer SQNR (what the default compare reports), and only "
                         "the default compare is timed")
    args = ap.parse_args()
    formats = tuple(args.formats.split(","))
    base = QuantConfig()
    separate, calib_seconds = [], []
    for f in formats:
        start = time.perf_counter()
        result = quantize(args.model, calib=args.calib, config=format_config(base, parse_format(f)), val=args.val,
                          per_layer=args.per_layer)
        separate.append(time.perf_counter() - start)
        calib_seconds.append(result.report.seconds.get("ranges", 0.0) if result.plan.calibrated_activations() else 0.0)
        print(f"separate {f:10s} {separate[-1]:7.1f}s (ranges {calib_seconds[-1]:.1f}s)", flush=True)
    # separate runs minus the calibrations beyond the first (what sharing one calibration would save)
    shared_baseline = sum(separate) - (sum(calib_seconds) - max(calib_seconds, default=0.0))
    timings = {}
    runs = [("compare (default: per-layer, latency)", CompareOptions(formats))]
    if not args.per_layer:
        runs.insert(0, ("compare --no-per-layer --latency-runs 0", CompareOptions(formats, False, 0)))
    for label, options in runs:
        start = time.perf_counter()
        result = compare_formats(args.model, args.calib, args.val, base, options)
        timings[label] = time.perf_counter() - start
        print(f"{label}: {timings[label]:.1f}s  stages {({k: round(v, 1) for k, v in result.seconds.items()})}",
              flush=True)
    print(f"separate total {sum(separate):.1f}s; minus repeated calibration {shared_baseline:.1f}s")
    for label, t in timings.items():
        print(f"{label}: {t:.1f}s = {t / shared_baseline:.2f}x the shared-calibration baseline")


if __name__ == "__main__":
    main()
