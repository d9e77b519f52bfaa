"""The handoff report of ``quantize --report``: plan, scales, skipped nodes and why, TensorRT lint, validation.

What a deployment engineer attaches to a review, as JSON (``.json``) or Markdown (``.md``).
"""

from __future__ import annotations

import math

import numpy as np

from onnxq.pipeline import QuantizeResult
from onnxq.trt.lint import lint_model


def _scale_entry(params) -> dict:
    scale = np.asarray(params.scale, dtype=np.float64).ravel()
    return {"dtype": params.dtype, "axis": params.axis, "channels": params.channels,
            "scale": scale.tolist() if params.per_channel else float(scale[0]),
            "zero_point": np.asarray(params.zero_point).ravel().tolist() if params.per_channel
            else int(np.asarray(params.zero_point).ravel()[0])}


def report_payload(result: QuantizeResult) -> dict:
    payload = result.report.as_dict()
    payload["output"] = str(result.output_path) if result.output_path else None
    payload["tensors"] = {t.name: {"role": t.role, "dtype": t.dtype, "symmetric": t.symmetric, "axis": t.axis,
                                   "method": t.method, "consumers": [f"{c.node}:{c.input_index}" for c in t.consumers],
                                   **{"params": _scale_entry(result.scales[t.name])}}
                          for t in result.plan.tensors.values()}
    payload["skipped"] = [{"node": d.node, "op_type": d.op_type, "reason": d.reason}
                          for d in result.plan.nodes if not d.quantized]
    if result.plan.target == "tensorrt":
        findings = lint_model(result.model)  # the settings of `onnxq lint` without flags: one lint, one result
        payload["lint"] = [f.to_dict() for f in findings]
    payload["compression"] = result.report.compression
    return payload


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else str(x)
    return str(x)


def render_markdown(payload: dict, plot: str | None = None, plot_note: str | None = None) -> str:
    """The Markdown report; ``plot`` (a PNG path relative to the report) is embedded under Validation, or
    ``plot_note`` (one line: why there is no picture) is shown there instead."""
    lines = ["# onnxq quantization report", "",
             f"- target: `{payload['target']}`; ranges from {payload['ranges_from']} "
             f"({payload['calib_batches']} batches)",
             f"- output: `{payload['output']}`",
             f"- size: {payload['size_before'] / 1e6:.2f} MB -> {payload['size_after'] / 1e6:.2f} MB "
             f"({payload['compression']:.2f}x)", ""]
    lines += ["## Prepare", ""] + [f"- {n}" for n in payload["prepare"]] + [""]
    if payload.get("validation"):
        lines += ["## Validation (onnxruntime, FP32 vs quantized)", "",
                  "| output | SQNR dB | cosine | MAE | max abs err |", "|---|---|---|---|---|"]
        for o in payload["validation"]["outputs"]:
            lines.append(f"| {o['name']} | {_fmt(o['sqnr_db'])} | {o['cosine']:.6f} | {_fmt(o['mae'])} | "
                         f"{_fmt(o['max_abs_error'])} |")
        lines.append("")
        if plot:
            lines += [f"![per-layer SQNR along the network]({plot})", ""]
        elif plot_note:
            lines += [f"_{plot_note}_", ""]
    lines += ["## Skipped nodes", ""]
    lines += [f"- `{s['node']}` ({s['op_type']}): {s['reason']}" for s in payload["skipped"]] or ["- none"]
    lines += ["", "## Quantized tensors", "", "| tensor | role | dtype | axis | scale | consumers |",
              "|---|---|---|---|---|---|"]
    for name, t in payload["tensors"].items():
        scale = t["params"]["scale"]
        shown = f"{min(scale):.4g}..{max(scale):.4g} (x{len(scale)})" if isinstance(scale, list) else f"{scale:.4g}"
        lines.append(f"| `{name}` | {t['role']} | {t['dtype']} | {t['axis']} | {shown} | {len(t['consumers'])} |")
    if "lint" in payload:
        lines += ["", "## TensorRT lint", ""]
        lines += [f"- {f['severity']}: [{f['rule']}] `{f['subject']}`: {f['message']}" for f in payload["lint"]] or [
            "- no findings"]
    return "\n".join(lines) + "\n"
