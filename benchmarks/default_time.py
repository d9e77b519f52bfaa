"""Wall time of the default `onnxq quantize` against plain min-max, side by side, on reference and real models.

    python benchmarks/default_time.py [--models pointnext centerpoint bevfusion vit det rec ori] [--runs 3]
                                      [--variants minmax default [auto ...]] [--workdir /tmp/onnxq-default-time]
                                      [--cli [--onnxq-tree OTHER_CHECKOUT ...]]

The issue's budget: the default quantize costs at most 2x min-max on the same model. For each model the variants run
alternately (minmax, default, minmax, default, ...) ``--runs`` times, each as one ``onnxq.quantize`` call in this
process (library call, no process start-up; calibration data on disk as the CLI reads it), and the table gives the
median wall time of each variant and its ratio to min-max's. ``--cli`` times each variant as the whole command in a
new process instead (start-up, imports, model load and write included: what a user times); ``--onnxq-tree DIR``
adds the variants of another checkout (a ``git worktree`` of an earlier commit) to the same alternation, so a change's
cost is measured before and after in one run. Variants:

* ``minmax``: ``--method minmax`` with every accuracy-recovery stage off (the old default, the issue's baseline);
* ``default``: ``QuantConfig()`` -- whatever the defaults are at this commit (``onnxq quantize MODEL --calib DATA``);
* ``auto``: the defaults with ``--method auto`` (per-tensor range selection on the consuming layers' outputs);
* ``bc`` / ``no-bc``: the defaults with bias correction on / off (``--bias-correction`` / ``--no-bias-correction``;
  the tensorrt default has it on);
* ``sq`` / ``no-sq``: the defaults with SmoothQuant's per-tensor search on / off (``--smoothquant auto`` / ``none``);
* ``shift`` / ``no-shift``: the defaults with the activation shift on / off (``--[no-]shift-activations``; the
  tensorrt default has it on since session 28).

Reference models are exported with ``onnxq models export`` into ``--workdir`` (needs torch); the real models and their
calibration sets come from ``benchmarks/realdata.py``. The machine is shared: compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from onnxq.calib.base import CalibOptions  # noqa: E402
from onnxq.config import QuantConfig, RecoveryOptions  # noqa: E402
from onnxq.pipeline import quantize  # noqa: E402

REFERENCE = ("pointnext", "centerpoint", "bevfusion", "vit")
REAL = ("det", "rec", "ori")
HELD_OUT = ("ppdet", "pprec", "ppcls", "yolodoc", "minilm")  # held-out real models; not in the default list

VARIANTS = {
    "minmax": QuantConfig(calib=CalibOptions(method="minmax"),
                          recovery=RecoveryOptions(equalize=False, bias_correction=False, smoothquant_alpha="off",
                                                   activation_shift=False)),
    "default": QuantConfig(),
    "auto": replace(QuantConfig(), calib=replace(QuantConfig().calib, method="auto")),
    "bc": replace(QuantConfig(), recovery=replace(QuantConfig().recovery, bias_correction=True)),
    "no-bc": replace(QuantConfig(), recovery=replace(QuantConfig().recovery, bias_correction=False)),
    "sq": replace(QuantConfig(), recovery=replace(QuantConfig().recovery, smoothquant_alpha="auto")),
    "no-sq": replace(QuantConfig(), recovery=replace(QuantConfig().recovery, smoothquant_alpha="off")),
    "shift": replace(QuantConfig(), recovery=replace(QuantConfig().recovery, activation_shift=True)),
    "no-shift": replace(QuantConfig(), recovery=replace(QuantConfig().recovery, activation_shift=False)),
}
COMMANDS = {
    "minmax": "onnxq quantize MODEL --calib DATA --method minmax --no-equalize --no-bias-correction --smoothquant off "
              "--no-shift-activations",
    "default": "onnxq quantize MODEL --calib DATA",
    "auto": "onnxq quantize MODEL --calib DATA --method auto",
    "bc": "onnxq quantize MODEL --calib DATA --bias-correction",
    "no-bc": "onnxq quantize MODEL --calib DATA --no-bias-correction",
    "sq": "onnxq quantize MODEL --calib DATA --smoothquant auto",
    "no-sq": "onnxq quantize MODEL --calib DATA --smoothquant off",
    "shift": "onnxq quantize MODEL --calib DATA --shift-activations",
    "no-shift": "onnxq quantize MODEL --calib DATA --no-shift-activations",
}


def model_and_data(name: str, workdir: Path) -> tuple[str, str]:
    """The FP32 model and calibration folder of a reference (exported once into ``workdir``) or real model."""
    if name in REFERENCE:
        folder = workdir / name
        if not (folder / "model.onnx").is_file():
            from onnxq.models.export import export_model

            export_model(name, folder)
        return str(folder / "model.onnx"), str(folder / "calib")
    from realdata import ensure_dataset, model_path

    calib, _ = ensure_dataset(name)
    return str(model_path(name)), str(calib)


def time_model(model: str, calib: str, variants: list[str], runs: int, cli: bool = False,
               workdir: Path | None = None, stages: dict[str, list[dict[str, float]]] | None = None,
               target: str = "tensorrt", trees: Sequence[Path] = ()) -> dict[str, list[float]]:
    """Wall seconds of each run of each variant for ``target``; ``stages`` (library calls only) gets each run's
    seconds per pipeline stage (``QuantReport.seconds``). ``trees`` (``cli`` only): other checkouts whose variants
    but min-max run too, in the same alternation, as ``variant@tree``."""
    columns = {v: (v, REPO) for v in variants}
    columns.update({f"{v}@{tree.name}": (v, tree) for tree in trees for v in variants if v != "minmax"})
    times: dict[str, list[float]] = {c: [] for c in columns}
    for _ in range(runs):
        for column, (variant, repo) in columns.items():
            start = time.perf_counter()
            if cli:
                run_command(variant, model, calib, workdir or Path("/tmp"), target, repo)
            else:
                result = quantize(model, calib=calib, config=replace(VARIANTS[variant], target=target))
                if stages is not None:
                    stages.setdefault(variant, []).append(dict(result.report.seconds))
            times[column].append(time.perf_counter() - start)
    return times


def stage_medians(runs: list[dict[str, float]]) -> str:
    """``stage 1.23`` for each pipeline stage, the median over ``runs``."""
    names = list(dict.fromkeys(name for run in runs for name in run))
    return ", ".join(f"{name} {statistics.median(run.get(name, 0.0) for run in runs):.2f}" for name in names)


def run_command(variant: str, model: str, calib: str, workdir: Path, target: str = "tensorrt",
                repo: Path = REPO) -> None:
    """The variant's ``onnxq quantize`` command line, run as a new process of the checkout ``repo`` (start-up,
    imports, model load and the write included: the wall time a user sees)."""
    args = COMMANDS[variant].split()[2:]  # drop "onnxq quantize"
    args = [model if a == "MODEL" else calib if a == "DATA" else a for a in args]
    out = workdir / f"{Path(model).stem}-{variant}-{repo.name}.onnx"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    # run from the checkout: `python -m` puts the working directory first on the import path
    subprocess.run([sys.executable, "-m", "onnxq.cli", "quantize", *args, "--target", target, "-o", str(out), "-q"],
                   check=True, env=env, stdout=subprocess.DEVNULL, cwd=repo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*REFERENCE, *REAL], choices=[*REFERENCE, *REAL, *HELD_OUT])
    parser.add_argument("--variants", nargs="+", default=["minmax", "default"], choices=list(VARIANTS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--target", default="tensorrt", help="the --target of every variant (default tensorrt)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxq-default-time"))
    parser.add_argument("--cli", action="store_true",
                        help="time each variant as a whole `python -m onnxq.cli quantize` process instead of a "
                             "library call in this process")
    parser.add_argument("--onnxq-tree", type=Path, action="append", default=[], metavar="DIR",
                        help="with --cli: also run the variants but min-max from this checkout (a `git worktree` of "
                             "another commit), alternating with this one's; repeatable")
    parser.add_argument("--stages", action="store_true",
                        help="also print each variant's median seconds per pipeline stage (library calls only)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    if args.onnxq_tree and not args.cli:
        parser.error("--onnxq-tree times other checkouts as new processes: add --cli")
    variants = ["minmax", *[v for v in args.variants if v != "minmax"]]
    columns = [*variants, *(f"{v}@{tree.name}" for tree in args.onnxq_tree for v in variants[1:])]
    header = " | ".join(f"{c} s" for c in columns)
    ratios = " | ".join(f"{c} / min-max" for c in columns[1:])
    print(f"| model | {header} | {ratios} |")
    print("|---|" + "---:|" * (2 * len(columns) - 1))
    breakdown: list[str] = []
    for name in args.models:
        model, calib = model_and_data(name, args.workdir)
        args.workdir.mkdir(parents=True, exist_ok=True)
        stages: dict[str, list[dict[str, float]]] | None = {} if args.stages and not args.cli else None
        times = time_model(model, calib, variants, args.runs, args.cli, args.workdir, stages, args.target,
                           args.onnxq_tree)
        breakdown += [f"- {name} {v}: {stage_medians(runs)}" for v, runs in (stages or {}).items()]
        medians = {c: statistics.median(t) for c, t in times.items()}
        cells = " | ".join(f"{medians[c]:.2f}" for c in columns)
        ratio_cells = " | ".join(f"{medians[c] / medians['minmax']:.2f}x" for c in columns[1:])
        print(f"| {name} | {cells} | {ratio_cells} |", flush=True)
    how = "each a new process (--cli)" if args.cli else "library calls in one process"
    print(f"\nmedians of {args.runs} alternating runs per variant, {how}, --target {args.target}; commands:")
    for v in variants:
        print(f"- {v}: `{COMMANDS[v]}`")
    if breakdown:
        print("\nmedian seconds per pipeline stage:")
        print("\n".join(breakdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
