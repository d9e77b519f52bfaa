"""QAT vs PTQ on the reference models, every metric measured in onnxruntime on the exported graphs.

    python benchmarks/qat_bench.py [pointnext centerpoint bevfusion vit] [-o benchmarks/out/qat]
    python benchmarks/qat_bench.py --step-cost 8          # QAT step / float step, medians, side by side
    python benchmarks/qat_bench.py centerpoint --imbalance 8 --inits minmax   # a model where PTQ loses

Prints (and writes to OUT/qat_results.md / .json) one row per model and QAT start: FP32, PTQ with each onnxq
calibration method, QAT started from the best method's ranges (the issue's comparison) and from the worst's, and the
share of the PTQ loss QAT won back. Needs torch and the committed weights (onnxq/models/weights/*.pt). Two CPU
threads; about 2 to 4 minutes per model.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from onnxq.qat.reference import main

    args = sys.argv[1:]
    if "-o" not in args and "--out" not in args:
        args += ["-o", str(Path(__file__).resolve().parent / "out" / "qat")]
    raise SystemExit(main(args))
