"""How far the default (screened) `onnxq sensitivity` is from `--exhaustive`, and what each costs, on the public
real models.

    OPENBLAS_NUM_THREADS=1 python benchmarks/sensitivity_agreement.py [--models det rec ori] [--val-batches 2]

Per model: calibrate once (the command's own stages), then analyse the validation batches twice, with the defaults
(every node screened on the first sample, the most harmful refined on all) and with ``exhaustive`` (every node on
all). Printed: process CPU seconds of each per-node stage against the calibration pass (robust to the shared
machine's load, which inflates wall time), and the agreement of the default's figures with the exhaustive ones over
all nodes: Spearman rank correlation of the only-quantized SQNR, how many of the exhaustive top 10 by only-quantized
SQNR and by |gain| the default's top 10 holds, and the largest |gain| difference on rows measured on all samples.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from onnxq.config import QuantConfig  # noqa: E402
from onnxq.data import BatchSource  # noqa: E402
from onnxq.graph import load_model  # noqa: E402
from onnxq.recovery.sensitivity import SensitivityOptions, analyze, calibrate_model, spearman  # noqa: E402


def top(rows, key, n: int = 10) -> set[str]:
    return {r.node for r in sorted(rows, key=key)[:n]}


def measure(name: str, val_batches: int) -> str:
    from realdata import ensure_split, model_path

    calib, val = ensure_split(name, "calib"), ensure_split(name, "val")
    model = load_model(str(model_path(name)))
    config = QuantConfig()
    calibrated = calibrate_model(model, str(calib), config)
    batches = list(BatchSource(model, str(val), max_batches=val_batches, batch_size=config.batch_size))
    default, _ = analyze(calibrated, batches)
    exhaustive, _ = analyze(calibrated, batches, options=SensitivityOptions(exhaustive=True))
    calib_cpu = calibrated.cpu_seconds.get("calibrate", 0.0) or 1e-9
    d = {r.node: r for r in default.nodes}
    e = exhaustive.nodes
    rho = spearman([d[r.node].sqnr_only_quantized for r in e], [r.sqnr_only_quantized for r in e])
    by_q = len(top(e, lambda r: r.sqnr_only_quantized) & top(default.nodes, lambda r: r.sqnr_only_quantized))
    by_gain = len(top(e, lambda r: -abs(r.gain_db)) & top(default.nodes, lambda r: -abs(r.gain_db)))
    full = [r for r in e if d[r.node].samples == r.samples]
    gain_diff = max((abs(d[r.node].gain_db - r.gain_db) for r in full), default=0.0)
    cost = {k: v.cpu_seconds.get("per-node runs", 0.0) for k, v in (("default", default), ("exhaustive", exhaustive))}
    return (f"| {name} ({len(e)}, {exhaustive.samples}) | {calib_cpu:.1f} s | {cost['exhaustive']:.1f} s = "
            f"{cost['exhaustive'] / calib_cpu:.1f}x | {cost['default']:.1f} s = "
            f"**{cost['default'] / calib_cpu:.1f}x** | "
            f"{rho:.3f}, {by_q}/10 / {by_gain}/10 | {gain_diff:.2f} dB |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["det", "rec", "ori"])
    parser.add_argument("--val-batches", type=int, default=2)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    print("| model (quantized nodes, val samples) | calibration CPU | `--exhaustive` per-node CPU "
          "| default per-node CPU | default vs exhaustive: only-Q Spearman, top-10 / gain top-10 "
          "| largest gain difference, rows on all samples |")
    print("|---|---:|---:|---:|---|---:|")
    for name in args.models:
        print(measure(name, args.val_batches), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
