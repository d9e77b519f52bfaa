"""Wall time, peak RSS and SQNR of `onnxq quantize` on the ~5M-parameter 640x640 CNN with 32 calibration batches.

    python benchmarks/quantize_bench.py [--method minmax] [--workdir benchmarks/out/cnn640]

Each measurement runs `onnxq quantize` in a fresh process (peak RSS from the child's rusage); SQNR is measured on
4 held-out images with `onnxq validate`'s library call. Prints a Markdown table row per method.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import build_model, parameter_count, prepare_workdir  # noqa: E402


def run_measured(cmd: list[str]) -> tuple[float, int]:
    """Run ``cmd``; its wall time and the peak RSS (KB) of that child alone (os.wait4's rusage)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{stderr}")
    return wall, usage.ru_maxrss


def measure(workdir: Path, method: str, extra: list[str]) -> dict:
    out = workdir / f"model.{method}.int8.onnx"
    report = workdir / f"report.{method}.json"
    cmd = [sys.executable, "-m", "onnxq.cli", "quantize", str(workdir / "model.onnx"), "--calib",
           str(workdir / "calib"), "--method", method, "-o", str(out), "--val", str(workdir / "val"),
           "--report", str(report), *extra]
    wall, peak_kb = run_measured(cmd)
    payload = json.loads(report.read_text())
    outputs = payload["validation"]["outputs"]
    return {"method": method, "wall_s": wall, "peak_rss_mb": peak_kb / 1024,
            "calib_s": payload["seconds"]["ranges"], "sqnr_db": min(float(o["sqnr_db"]) for o in outputs),
            "cosine": min(o["cosine"] for o in outputs), "compression": payload["compression"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out" / "cnn640")
    ap.add_argument("--method", action="append", help="calibration method(s) (default: minmax)")
    ap.add_argument("--calib-batches", type=int, default=32)
    args = ap.parse_args()
    workdir = prepare_workdir(args.workdir, calib_batches=args.calib_batches)
    print(f"model: {parameter_count(build_model()) / 1e6:.2f}M parameters, input 1x3x640x640, "
          f"{args.calib_batches} calibration batches", flush=True)
    print("| method | wall s | calibration s | peak RSS MB | SQNR dB | cosine | size ratio |")
    print("|---|---|---|---|---|---|---|")
    for method in args.method or ["minmax"]:
        r = measure(workdir, method, [])
        print(f"| {r['method']} | {r['wall_s']:.1f} | {r['calib_s']:.1f} | {r['peak_rss_mb']:.0f} | "
              f"{r['sqnr_db']:.2f} | {r['cosine']:.5f} | {r['compression']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
