"""Local calibration vs calibration on a 2-CPU local Ray instance, side by side, on a reference model.

Two views, each run interleaved (local, Ray, local, Ray, ...) and reported as medians:

* whole command, a fresh process per run: ``onnxq calibrate`` without and with ``--ray --shards 2``; the Ray run
  starts (and stops) its own local Ray instance, so its time includes Ray's startup and the workers' imports;
* whole command against a Ray instance already running (``--ray ADDRESS``), as on a cluster you keep up;
* in one process with Ray already running (a cluster you keep up): the ``calibrate`` stage alone, local vs
  :class:`onnxq.distributed.ray_calibrate.RayCalibration`; the first Ray call (workers start and import onnxq) is
  reported apart from the warm ones.

Every Ray result is checked to equal the local one bit for bit.

    python benchmarks/ray_bench.py                          # centerpoint (exported once), entropy, 3 repeats
    python benchmarks/ray_bench.py --copies 4 --method minmax   # the data folder 4 times over (symlinks)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def export(name: str, workdir: Path) -> None:
    if not (workdir / "model.onnx").exists():
        subprocess.run([sys.executable, "-m", "onnxq.cli", "models", "export", name, "-o", str(workdir)], check=True,
                       env=env())


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def data_folder(workdir: Path, copies: int) -> Path:
    """The calibration folder, or a folder of symlinks holding it ``copies`` times over."""
    if copies == 1:
        return workdir / "calib"
    folder = workdir / f"calib_x{copies}"
    if not folder.exists():
        folder.mkdir()
        for k in range(copies):
            for f in sorted((workdir / "calib").iterdir()):
                if f.is_file():
                    (folder / f"{k:02d}_{f.name}").symlink_to(f.resolve())
    return folder


def timed_command(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "onnxq.cli", "-q", *args], check=True, env=env(),
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def same_stats(a: Path, b: Path) -> bool:
    with np.load(a) as x, np.load(b) as y:
        return x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)


def commands(workdir: Path, data: Path, method: str, repeats: int, what: str, ray_flags: list[str]) -> None:
    base = ["calibrate", str(workdir / "model.onnx"), "--calib", str(data), "--method", method]
    local, ray = [], []
    for _ in range(repeats):
        local.append(timed_command([*base, "-o", str(workdir / "bench_local.npz")]))
        ray.append(timed_command([*base, *ray_flags, "--shards", "2", "-o", str(workdir / "bench_ray.npz")]))
    identical = same_stats(workdir / "bench_local.npz", workdir / "bench_ray.npz")
    print(f"| {what} | {statistics.median(local):.2f} | {statistics.median(ray):.2f} | "
          f"{statistics.median(ray) / statistics.median(local):.2f} | {identical} |", flush=True)


def in_process(workdir: Path, data: Path, method: str, repeats: int) -> None:
    import onnx
    import ray

    from onnxq.calib.base import CalibOptions
    from onnxq.config import QuantConfig
    from onnxq.distributed.ray_calibrate import RayCalibration, RayOptions
    from onnxq.pipeline import calibrate, prepare
    from onnxq.plan import build_plan

    config = QuantConfig(calib=CalibOptions(method=method))
    prepared, _ = prepare(onnx.load(workdir / "model.onnx"), config)
    plan = build_plan(prepared, config)
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    startup = time.perf_counter() - start
    # Ray picks the token of the cluster it started up by itself only for address "auto"
    os.environ["RAY_AUTH_MODE"] = "token"
    commands(workdir, data, method, repeats, "whole command, Ray cluster already up (`--ray ADDRESS`)",
             ["--ray", ray.get_runtime_context().gcs_address])
    run = RayCalibration(workdir / "model.onnx", RayOptions(shards=2))
    local_s, ray_s, first = [], [], 0.0
    identical = True
    for i in range(repeats + 1):
        start = time.perf_counter()
        local, _ = calibrate(prepared, plan, str(data), config)
        if i:
            local_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        merged, _ = run(prepared, plan, str(data), config)
        elapsed = time.perf_counter() - start
        if i:
            ray_s.append(elapsed)
        else:
            first = elapsed
        identical &= all(np.array_equal(local[n].state()[k], merged[n].state()[k]) for n in local
                         for k in local[n].state())
    ray.shutdown()
    print(f"| calibrate stage, Ray already up (warm workers) | {statistics.median(local_s):.2f} | "
          f"{statistics.median(ray_s):.2f} | {statistics.median(ray_s) / statistics.median(local_s):.2f} | "
          f"{identical} |")
    print(f"| ray.init (local, 2 CPUs) / first calibrate on Ray (cold workers) | - | {startup:.2f} / {first:.2f} "
          "| - | - |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="centerpoint", help="reference model to export (default centerpoint)")
    ap.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out" / "ray")
    ap.add_argument("--method", default="entropy")
    ap.add_argument("--copies", type=int, default=1, help="use the calibration folder this many times over")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    export(args.model, args.workdir)
    data = data_folder(args.workdir, args.copies)
    files = sum(1 for f in data.iterdir() if f.is_file())
    print(f"{args.model}, {files} batch files, method {args.method}, {os.cpu_count()} cores, "
          f"{args.repeats} repeats (medians, seconds)\n")
    print("| what | local s | Ray 2 CPUs s | Ray / local | identical |")
    print("|---|---|---|---|---|")
    commands(args.workdir, data, args.method, args.repeats, "whole command, fresh process (`--ray` starts Ray)",
             ["--ray"])
    in_process(args.workdir, data, args.method, args.repeats)


if __name__ == "__main__":
    main()
