"""Wall time of ``python -m onnxq.cli --help`` for one or more source trees, interleaved, against a bare interpreter.

    python benchmarks/cli_startup.py [TREE ...]      # default: this checkout

Each tree goes first on PYTHONPATH; prints median and minimum of N runs and which heavy modules ``--help`` loaded.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = 15
HEAVY = ("onnx", "onnxruntime", "numpy")
PROBE = ("import sys\nfrom onnxq.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
         f"print(__import__('json').dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr)\n")


def wall(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main(trees: list[str]) -> None:
    runs: dict[str, list[float]] = {"python -c pass": []} | {t: [] for t in trees}
    for _ in range(RUNS):
        runs["python -c pass"].append(wall([sys.executable, "-c", "pass"], dict(os.environ)))
        for tree in trees:
            env = dict(os.environ, PYTHONPATH=tree)
            runs[tree].append(wall([sys.executable, "-m", "onnxq.cli", "--help"], env))
    for label, times in runs.items():
        loaded = ""
        if label in trees:
            probe = subprocess.run([sys.executable, "-c", PROBE], env=dict(os.environ, PYTHONPATH=label),
                                   capture_output=True, text=True, check=True)
            loaded = f", heavy modules loaded: {json.loads(probe.stderr.strip().splitlines()[-1]) or 'none'}"
        print(f"{label}: median {statistics.median(times):.3f} s, min {min(times):.3f} s over {RUNS} runs{loaded}")


if __name__ == "__main__":
    main(sys.argv[1:] or [str(Path(__file__).resolve().parents[1])])
