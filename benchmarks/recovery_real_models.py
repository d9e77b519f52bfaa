"""Accuracy-recovery techniques side by side on the public real models (docs/accuracy_recovery.md).

    python benchmarks/recovery_real_models.py [--models ori rec det] [--variants minmax mse default ...]
    python benchmarks/recovery_real_models.py --timing 3 [--models ...]   # old vs new default wall time

Uses the real-model benchmark's data sets and task measures (``benchmarks/realdata.py``, ``benchmarks/realtasks.py``
of ``benchmarks/real_models.py``): calibration on ``calib/``, worst-output SQNR and task agreement with FP32 on
``eval/``. Every variant is one ``onnxq.quantize`` call in this process, one after another, with its wall time and
the time of each pipeline stage; prints one line per run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from realdata import charset_of, ensure_dataset, model_path, read_labels  # noqa: E402
from realtasks import TaskAgreement  # noqa: E402

from onnxq.calib.base import CalibOptions  # noqa: E402
from onnxq.config import QuantConfig, RecoveryOptions  # noqa: E402
from onnxq.data import BatchSource  # noqa: E402
from onnxq.graph import load_model  # noqa: E402
from onnxq.pipeline import quantize  # noqa: E402
from onnxq.runtime import make_session  # noqa: E402
from onnxq.validate.metrics import ErrorAccumulator  # noqa: E402

OFF = RecoveryOptions(equalize=False, bias_correction=False, smoothquant_alpha="off", activation_shift=False)
DEFAULT = QuantConfig()


def _plain(method: str, **recovery) -> QuantConfig:
    return QuantConfig(calib=CalibOptions(method=method), recovery=replace(OFF, **recovery))


def _default(**recovery) -> QuantConfig:
    return replace(DEFAULT, recovery=replace(DEFAULT.recovery, **recovery))


VARIANTS = {
    "minmax": _plain("minmax"),  # the default before recovery
    "mse": _plain("mse"),
    "default": DEFAULT,  # mse + equalization
    "default+bc": _default(bias_correction=True),
    "default+sq": _default(smoothquant_alpha=0.5),
    "default+ada": _default(adaround=True),
    "default+gptq": _default(weight_rounding="gptq"),
    "auto+eq": replace(DEFAULT, calib=CalibOptions(method="auto")),
}


def evaluate(name: str, source: str, quantized, evaluation: Path) -> tuple[float, dict]:
    ref_s, q_s = make_session(source), make_session(quantized)
    accs = [ErrorAccumulator() for _ in ref_s.get_outputs()]
    task = TaskAgreement(name, read_labels(evaluation), charset_of(name, model_path(name)))
    for batch in BatchSource(load_model(source), evaluation):
        ref, got = ref_s.run(None, batch), q_s.run(None, batch)
        for acc, r, g in zip(accs, ref, got):
            acc.add(r, g)
        task.add(ref[0], got[0])
    return min(a.sqnr_db for a in accs), task.result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ori", "rec", "det"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--timing", type=int, metavar="N",
                        help="instead: alternate min-max (the old default) and the new default N times per model and "
                             "print the median wall times and their ratio")
    args = parser.parse_args(argv)
    if args.timing:
        for name in args.models:
            calib, _ = ensure_dataset(name)
            times: dict[str, list[float]] = {"minmax": [], "default": []}
            for _ in range(args.timing):
                for variant in times:
                    start = time.perf_counter()
                    quantize(str(model_path(name)), calib=str(calib), config=VARIANTS[variant])
                    times[variant].append(time.perf_counter() - start)
            old, new = statistics.median(times["minmax"]), statistics.median(times["default"])
            print(f"{name}: min-max median {old:.1f}s, default median {new:.1f}s, ratio {new / old:.2f}", flush=True)
        return 0
    for name in args.models:
        calib, evaluation = ensure_dataset(name)
        source = str(model_path(name))
        for variant in args.variants:
            start = time.perf_counter()
            result = quantize(source, calib=str(calib), config=VARIANTS[variant])
            seconds = time.perf_counter() - start
            sqnr, task = evaluate(name, source, result.model, evaluation)
            stages = " ".join(f"{k}={v:.1f}" for k, v in result.report.seconds.items())
            agreement = {k: round(v, 3) for k, v in task.items() if isinstance(v, float)}
            print(f"{name} {variant:12s} SQNR {sqnr:6.2f} dB {agreement} {seconds:.1f}s ({stages})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
