"""``onnxq export-scales``: read a Q/DQ model's scales and write them for another toolchain.

A model onnxq quantized after float rewrites (equalization, on by default; SmoothQuant) records them in its metadata
(:mod:`onnxq.scales.rewrites`); its scales belong to the rewritten float graph, not to the original one:

* ``--format json`` writes them into the file (version 3); ``quantize ORIGINAL --scales`` replays them;
* ``--format trt-cache`` / ``aimet`` cannot hold them. A TensorRT calibration cache is read by TensorRT together
  with the float ONNX model it builds (``trtexec --onnx=M --int8 --calib=C``), AIMET encodings with the float model
  a QNN/SNPE converter reads; either must be the rewritten model. So the export needs ``--float-model ORIGINAL.onnx``
  (the model that was quantized): the rewrites are replayed on it (weights digest checked) and the rewritten float
  model is written beside the scales as ``<output stem>.equalized.onnx``, the model the cache belongs to. Without it
  the export is refused with one line (rather than a cache that silently misfits the original model).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from onnxq.commands.common import add_model_and_output, guard
from onnxq.errors import OnnxqError
from onnxq.outputs import Output
from onnxq.scales.formats import FORMATS, TRT_CACHE_ALGORITHMS, TRT_CACHE_DEFAULT_ALGORITHM, TRT_CACHE_DEFAULT_VERSION


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export-scales", help="write a Q/DQ model's scales as JSON, TensorRT cache or AIMET",
                              description="Read the scales of a Q/DQ ONNX model (keyed by the quantized tensor's "
                              "name) and write them in another toolchain's format.")
    add_model_and_output(p, "Q/DQ ONNX model", "file to write")
    p.add_argument("--format", choices=FORMATS, required=True,
                   help="json (onnxq), trt-cache (TensorRT calibration cache, per-tensor only), aimet (0.6.1)")
    p.add_argument("--trt-version", default=TRT_CACHE_DEFAULT_VERSION,
                   help=f"version number in the calibration cache header (default {TRT_CACHE_DEFAULT_VERSION})")
    p.add_argument("--algorithm", choices=TRT_CACHE_ALGORITHMS, default=TRT_CACHE_DEFAULT_ALGORITHM,
                   help="calibrator name in the calibration cache header")
    p.add_argument("--float-model", metavar="ONNX",
                   help="trt-cache/aimet of an equalized model: the FP32 model that was quantized; the float model "
                   "the scales belong to (with the same equalization) is written beside them as "
                   "<output stem>.equalized.onnx")
    p.set_defaults(func=run)


def float_model_path(output: str | Path) -> Path:
    """Where the rewritten float model goes beside a trt-cache / aimet export: ``<stem>.equalized.onnx``."""
    path = Path(output)
    return path.with_name(f"{path.stem}.equalized.onnx")


def run(args: argparse.Namespace) -> int:
    from onnxq.atomic import AtomicGroup
    from onnxq.graph import load_model, model_outputs, save_model
    from onnxq.scales.io import dumps_scales
    from onnxq.scales.qdq_reader import read_qdq
    from onnxq.scales.rewrites import read_from_model
    from onnxq.scales.trt_cache import skipped_on_export

    guard([Output("-o", args.output)], model=args.model)
    model = load_model(args.model)
    record = read_from_model(model, args.model)
    rewritten = record is not None and bool(record.rewrites)
    float_path = float_model_path(args.output) if rewritten and args.format != "json" else None
    if float_path is not None and args.float_model is None:
        assert record is not None
        what = {"trt-cache": "a TensorRT calibration cache", "aimet": "AIMET encodings"}[args.format]
        raise OnnxqError(f"{args.model} was quantized after float rewrites ({record.summary()}), so {what} of it "
                         "fits only the rewritten float model: pass --float-model ORIGINAL.onnx to write that "
                         "model beside it, or export --format json (it records the rewrites), or quantize with "
                         f"{record.disabling_flags()}")
    if float_path is not None:
        guard([Output("-o", args.output), *model_outputs("-o (the equalized float model)", float_path)],
              model=[args.model, args.float_model])
    entries = read_qdq(model)
    table = {name: entry.params for name, entry in entries.items()}
    params = sorted(name for name, entry in entries.items() if entry.role == "weight")
    # no fingerprint: it identifies the float model the scales are for, which a Q/DQ model cannot name
    metas: dict[str, dict[str, Any]] = {
        "json": {"param_names": params, "float_rewrites": record},
        "aimet": {"param_names": params},
        "trt-cache": {"trt_version": args.trt_version, "algorithm": args.algorithm, "param_names": params},
    }
    meta = metas[args.format]
    if not table:
        print(f"warning: {args.model} has no Q/DQ nodes onnxq reads; writing an empty scales file", file=sys.stderr)
    text = dumps_scales(table, args.format, **meta)
    with AtomicGroup() as group:  # the scales and the float model they belong to appear together or not at all
        group.write_bytes(args.output, text.encode())
        if float_path is not None:
            assert record is not None
            save_model(rewritten_float_model(args.float_model, record, args.model), float_path, group=group)
    skipped = set(skipped_on_export(table)) | set(params)
    left_out = {"trt-cache": sum(1 for name in table if name in skipped),
                "aimet": sum(1 for p in table.values() if p.dtype not in ("int8", "uint8") or p.blockwise)}
    written = len(table) - left_out.get(args.format, 0)
    print(f"wrote {written} tensor scale(s) to {args.output} ({args.format})")
    if rewritten and args.format == "json":
        assert record is not None
        print(f"  with the float rewrites ({record.summary()}): quantize the original float model with --scales "
              "to replay them")
    if float_path is not None:
        print(f"wrote {float_path}: the equalized float model these scales belong to (not {args.float_model})")
        if args.format == "trt-cache":
            print(f"  trtexec --onnx={float_path} --int8 --calib={args.output}")
    return 0


def rewritten_float_model(float_model: str, record, source: str):
    """``float_model`` prepared as quantize prepares it (default settings) with ``record`` replayed; refused
    unless its weights are then exactly those the quantized model was made from."""
    from onnxq.config import QuantConfig
    from onnxq.graph import load_model
    from onnxq.pipeline import prepare
    from onnxq.recovery.replay import replay_rewrites
    from onnxq.scales.rewrites import weights_digest

    prepared, _ = prepare(load_model(float_model), QuantConfig(), in_place=True)
    if weights_digest(prepared) not in (record.weights_before, record.weights_after):
        raise OnnxqError(f"--float-model {float_model} is not the float model {source} was quantized from (its "
                         "prepared weights differ); pass the model given to onnxq quantize")
    replay_rewrites(prepared, record, source=source, strict=True)
    return prepared
