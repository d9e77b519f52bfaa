"""``onnxq models``: list, export and evaluate the reference models."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help="reference models with synthetic data: list, export, eval, qat",
        description="Reference models of 3D-perception families (PointNeXt, CenterPoint, BEVFusion, ViT) with "
        "seeded synthetic tasks.",
    )
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="list the reference models")
    p.set_defaults(func=run_list)

    p = sub.add_parser("export", help="write model.onnx (FP32), calib/, val/ and val/labels/ for a model (needs torch)")
    p.add_argument("name", help="model name (see onnxq models list)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--calib-batches", type=int, default=16)
    p.add_argument("--calib-batch-size", type=int, default=8)
    p.add_argument("--val-batches", type=int, default=16)
    p.add_argument("--val-batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument("--weights", type=Path, default=None, help="a state_dict .pt instead of the shipped weights")
    p.set_defaults(func=run_export)

    p = sub.add_parser("eval", help="run an ONNX model of a reference model in onnxruntime and print its task metric")
    p.add_argument("name", help="model name")
    p.add_argument("model", type=Path, help="the .onnx file (FP32 or quantized)")
    p.add_argument("--data", type=Path, required=True,
                   help="folder of .npz batches with labels/ (the val/ of an export)")
    p.set_defaults(func=run_eval)


    p = sub.add_parser("qat", help="FP32, PTQ (every method) and QAT task metrics of a reference model (needs torch)")
    p.add_argument("name", help="model name")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (models, data, qat_NAME.md/.json)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_qat)


def run_qat(args: argparse.Namespace) -> int:
    from onnxq.models.registry import get_model, import_torch

    get_model(args.name)  # unknown names fail before torch is imported
    from onnxq.commands.common import guard
    from onnxq.outputs import Output

    guard([Output("-o", args.output, folder=True)])
    import_torch()
    import sys
    import time

    from onnxq.qat.progress import StageProgress
    from onnxq.qat.reference import render_table, run_models_qat

    started = time.perf_counter()

    def stage(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", file=sys.stderr, flush=True)

    console = StageProgress()  # drawn by the CLI's progress listener, like every other stage
    try:
        record = run_models_qat(args.name, args.output, seed=args.seed, stage=stage, progress=console)
    finally:
        console.close()
    print(render_table([record]), end="")
    print(f"wrote {args.output / f'qat_{args.name}.md'}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from onnxq.models.registry import list_models

    rows = [("name", "family", "inputs", "metric", "description")]
    for m in list_models():
        rows.append((m.name, m.family, ",".join(m.inputs), m.metric_name, m.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    return 0


def run_export(args: argparse.Namespace) -> int:
    from onnxq.commands.common import guard
    from onnxq.models.export import export_model
    from onnxq.outputs import Output

    guard([Output("-o", args.output, folder=True)], weights=args.weights)
    res = export_model(
        args.name, args.output, calib_batches=args.calib_batches, calib_batch_size=args.calib_batch_size,
        val_batches=args.val_batches, val_batch_size=args.val_batch_size, seed=args.seed, weights=args.weights,
    )
    print(f"wrote {res.model_path}, {res.calib_dir}/ ({args.calib_batches} batches), {res.val_dir}/ "
          f"({args.val_batches} batches, labels in {res.labels_dir}/)")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from onnxq.models.evaluate import evaluate_onnx

    print(evaluate_onnx(args.name, args.model, args.data).format())
    return 0
