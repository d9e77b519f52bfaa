"""Every calibration method on the benchmark CNN (5.5M parameters, 640x640, 32 batches) and on a torch-exported
reference model: wall time, peak RSS and SQNR of `onnxq quantize`, one fresh process per run.

    python benchmarks/calib_bench.py                     # both models, all four methods
    python benchmarks/calib_bench.py --skip-reference    # only the 640x640 CNN
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import prepare_workdir  # noqa: E402
from quantize_bench import measure  # noqa: E402

METHODS = ("minmax", "percentile", "entropy", "mse")


def reference_workdir(root: Path, name: str) -> Path | None:
    """Export a reference model with `onnxq models export` (needs torch); None when that is not possible."""
    workdir = root / name
    if not (workdir / "model.onnx").exists():
        proc = subprocess.run([sys.executable, "-m", "onnxq.cli", "models", "export", name, "-o", str(workdir)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"(skipping {name}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'failed'})")
            return None
    return workdir


def table(title: str, workdir: Path, methods: tuple[str, ...]) -> None:
    print(f"\n{title}\n")
    print("| method | wall s | calibration s | peak RSS MB | SQNR dB | cosine | x minmax time |")
    print("|---|---|---|---|---|---|---|")
    base = None
    for method in methods:
        r = measure(workdir, method, [])
        base = base or r["wall_s"]
        print(f"| {method} | {r['wall_s']:.1f} | {r['calib_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['sqnr_db']:.2f} | "
              f"{r['cosine']:.5f} | {r['wall_s'] / base:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).parent / "out")
    ap.add_argument("--method", action="append", choices=METHODS)
    ap.add_argument("--reference", default="centerpoint", help="reference model to export (default centerpoint)")
    ap.add_argument("--skip-reference", action="store_true")
    args = ap.parse_args()
    methods = tuple(args.method or METHODS)
    table("benchmark CNN, 5.5M parameters, 1x3x640x640, 32 calibration batches",
          prepare_workdir(args.root / "cnn640"), methods)
    if not args.skip_reference:
        workdir = reference_workdir(args.root, args.reference)
        if workdir is not None:
            table(f"reference model {args.reference} (torch export, its own calib/ and val/)", workdir, methods)


if __name__ == "__main__":
    main()
