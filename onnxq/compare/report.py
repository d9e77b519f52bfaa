"""The comparison as JSON (``compare.json``) and Markdown (``compare.md``)."""

from __future__ import annotations

import math

from onnxq.compare.metrics import json_float
from onnxq.compare.run import CompareResult

MB = 1e6


def payload(result: CompareResult) -> dict:
    return {
        "model": result.model_name,
        "target": result.target,
        "float_rest": result.float_rest,
        "calib_batches": result.calib_batches,
        "val_batches": result.val_batches,
        "token_rows": result.token_rows,
        "fp32": {"model_bytes": result.fp32_bytes, "latency_ms": result.fp32_latency_ms},
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "formats": [{
            "format": f.label,
            "description": f.description,
            "runs_on_tensorrt": f.tensorrt_ok,
            "model_bytes": f.model_bytes,
            "size_ratio": result.fp32_bytes / f.model_bytes,
            "quantized_weights": {"fp32_bytes": f.weight_fp32_bytes, "stored_bytes": f.weight_bytes,
                                  "ratio": f.weight_ratio},
            "tensors": {"activations": len(f.plan.activations()), "weights": len(f.plan.weights())},
            "latency_ms": f.latency_ms,
            "quantize_seconds": round(f.quantize_seconds, 3),
            "outputs": [o.as_dict() for o in f.outputs],
            "layers": [{"name": n, "sqnr_db": json_float(db)} for n, db in f.layers],
        } for f in result.formats],
    }


def _num(x: float | None, fmt: str = ".2f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else "-inf"
    return format(x, fmt)


def render_markdown(result: CompareResult) -> str:
    lines = [f"# Format comparison: {result.model_name}", "",
             f"target {result.target}; float rest {result.float_rest}; one calibration over "
             f"{result.calib_batches} batch(es), validation on {result.val_batches} batch(es); reference: the FP32 "
             "model (prepared, numerically equal to the input)."
             + (f" Compared at real tokens: {result.token_rows}." if result.token_rows else ""), ""]
    lines += ["## Summary", "",
              "| format | lowest SQNR dB (output) | lowest cosine | lowest SSIM | model MB | quantized weights |",
              "|---|---:|---:|---:|---:|---:|"]
    for f in result.formats:
        worst = min(f.outputs, key=lambda o: o.sqnr_db)
        ssims = [o.ssim for o in f.outputs if o.ssim is not None]
        lines.append(f"| {f.label} | {_num(worst.sqnr_db)} ({worst.name}) | "
                     f"{_num(min(o.cosine for o in f.outputs), '.6f')} | {_num(min(ssims) if ssims else None, '.4f')} "
                     f"| {f.model_bytes / MB:.3f} | {_num(f.weight_ratio)}x |")
    lines.append("")
    outputs = [o.name for o in result.formats[0].outputs] if result.formats else []
    for name in outputs:
        lines += [f"## Output `{name}`", "",
                  "| format | SQNR dB | PSNR dB | cosine | MAE | MSE | max err | SSIM |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for f in result.formats:
            o = next(o for o in f.outputs if o.name == name)
            lines.append(f"| {f.label} | {_num(o.sqnr_db)} | {_num(o.psnr_db)} | {_num(o.cosine, '.6f')} | "
                         f"{_num(o.mae, '.4g')} | {_num(o.mse, '.4g')} | {_num(o.max_abs_error, '.4g')} | "
                         f"{_num(o.ssim, '.4f')} |")
        lines.append("")
    lat = result.fp32_latency_ms
    lines += ["## Size and speed", "",
              "| format | model MB | vs FP32 | quantized weights: FP32 -> stored | latency ms (ORT CPU) | TensorRT |",
              "|---|---:|---:|---:|---:|---|",
              f"| fp32 | {result.fp32_bytes / MB:.3f} | 1.00x | - | {_num(lat)} | yes |"]
    for f in result.formats:
        weights = (f"{f.weight_fp32_bytes / MB:.3f} -> {f.weight_bytes / MB:.3f} MB ({f.weight_ratio:.2f}x)"
                   if f.weight_ratio else "-")
        lines.append(f"| {f.label} | {f.model_bytes / MB:.3f} | {result.fp32_bytes / f.model_bytes:.2f}x | "
                     f"{weights} | {_num(f.latency_ms)} | {'yes' if f.tensorrt_ok else 'no (asymmetric)'} |")
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    lines += ["", f"time: {secs}", ""]
    return "\n".join(lines)
