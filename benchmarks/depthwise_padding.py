"""Depthwise channel padding on ort-cpu (docs/ort_cpu_rules.md 3.14): FP32 vs INT8 unpadded vs INT8 padded, timed
in one process in a random order each round, with SQNR against FP32 and the float equivalence of the padded float model.

    PYTHONPATH=$PWD python benchmarks/depthwise_padding.py [--models ppcls,mobilenet_v3_small] [--threads 2]
        [--cpu-time] [--runs 100] [--work /tmp/cpu_latency]

The unpadded variant is quantized with ``TargetRules.pad_depthwise_channels`` off, the padded one with it on
(everything else the ort-cpu rules); the channel groups padded are listed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_latency import TimingMode, build_cases, latency_batch, time_interleaved

from onnxq.config import QuantConfig
from onnxq.graph import load_model
from onnxq.passes.pad_depthwise_channels import PadDepthwiseChannels
from onnxq.pipeline import prepare, quantize
from onnxq.rules import TARGET_RULES
from onnxq.runtime import make_session
from onnxq.validate.compare import compare_models
from onnxq.validate.latency import LatencySettings


def float_equivalence(model: Path, batch: dict[str, np.ndarray], out: Path) -> float:
    """Largest absolute difference between the float model as prepared for ort-cpu (no padding) and the same
    model padded."""
    import onnx
    prepared, _ = prepare(load_model(model), QuantConfig(target="ort-cpu"))
    result = PadDepthwiseChannels().run(prepared)
    onnx.save(prepared, out.with_suffix(".prepared.onnx"))
    model = out.with_suffix(".prepared.onnx")
    print(f"  float: {'; '.join(result.notes) or 'nothing padded'}")
    onnx.save(result.model, out)
    a = make_session(str(model)).run(None, batch)
    b = make_session(str(out)).run(None, batch)
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="ppcls,mobilenet_v3_small")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--cpu-time", action="store_true")
    p.add_argument("--work", default="/tmp/cpu_latency")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    base = TARGET_RULES["ort-cpu"]
    TARGET_RULES["ort-cpu"] = replace(base, pad_depthwise_channels=False)
    for case in build_cases(args.models.split(","), work):
        batch = latency_batch(case)
        print(f"{case.name}: float max |diff| padded vs original "
              f"{float_equivalence(case.model, batch, work / case.name / 'float_padded.onnx'):.3g}")
        outs = {}
        for pad in (False, True):
            TARGET_RULES["ort-cpu"] = replace(base, pad_depthwise_channels=pad)
            out = work / case.name / f"ort-cpu.pad{int(pad)}.onnx"
            report = quantize(case.model, calib=str(case.calib), config=QuantConfig(target="ort-cpu"), output=out)
            notes = [n for n in report.report.prepare_notes if "padded" in n]
            print(f"  pad={pad}: {'; '.join(notes)}")
            outs[pad] = out
        TARGET_RULES["ort-cpu"] = base
        sqnr = [compare_models(str(case.model), str(outs[pad]), str(case.val)).min_sqnr_db for pad in (False, True)]
        timings = time_interleaved([str(case.model), str(outs[False]), str(outs[True])], batch,
                                   LatencySettings(threads=args.threads, runs=args.runs, min_seconds=0.0,
                                                   budget_seconds=float("inf")), TimingMode(cpu_time=args.cpu_time))
        fp32, plain, padded = (t.median_ms for t in timings)
        clock = "CPU time, 1 thread" if args.cpu_time else f"wall, {args.threads} threads"
        print(f"| {case.name} | {clock} | FP32 {fp32:.2f} ms | unpadded {plain:.2f} ms {fp32 / plain:.2f}x "
              f"SQNR {sqnr[0]:.2f} dB | padded {padded:.2f} ms {fp32 / padded:.2f}x SQNR {sqnr[1]:.2f} dB |",
              flush=True)


if __name__ == "__main__":
    main()
