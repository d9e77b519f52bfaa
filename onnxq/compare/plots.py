"""PNG plots of a comparison (needs matplotlib: ``pip install onnxq[plots]``).

- ``metrics.png``: SQNR, PSNR, cosine error (1 - cosine) and MAE per format, one group of bars per output;
- ``per_layer_sqnr.png``: SQNR of every shared layer along the network (FP32 node order), one line per format;
- ``error_hist.png``: histogram of (format - FP32) per format for each output (log counts);
- ``size_vs_error.png``: model size against the lowest output SQNR, one point per format (and FP32 size).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from onnxq.compare.run import CompareResult
from onnxq.errors import OnnxqError

PLOT_NAMES = ("metrics.png", "per_layer_sqnr.png", "error_hist.png", "size_vs_error.png")


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise OnnxqError("plots need matplotlib: pip install 'onnxq[plots]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite(x: float, cap: float = 200.0) -> float:
    return cap if math.isinf(x) and x > 0 else (-cap if math.isinf(x) else x)


def write_plots(result: CompareResult, folder: Path) -> list[Path]:
    plt = _pyplot()
    written = [_metrics(plt, result, folder / "metrics.png"), _per_layer(plt, result, folder / "per_layer_sqnr.png"),
               _histograms(plt, result, folder / "error_hist.png"), _size(plt, result, folder / "size_vs_error.png")]
    return [p for p in written if p is not None]


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def _metrics(plt, result: CompareResult, path: Path) -> Path:
    formats = [f.label for f in result.formats]
    outputs = [o.name for o in result.formats[0].outputs]
    panels = [("SQNR (dB, higher is better)", lambda o: _finite(o.sqnr_db)),
              ("PSNR (dB, higher is better)", lambda o: _finite(o.psnr_db)),
              ("1 - cosine (log, lower is better)", lambda o: max(1.0 - o.cosine, 1e-12)),
              ("MAE (log, lower is better)", lambda o: max(o.mae, 1e-12))]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    width = 0.8 / max(len(outputs), 1)
    x = np.arange(len(formats))
    for ax, (title, value) in zip(axes, panels, strict=True):
        for j, name in enumerate(outputs):
            values = [value(next(o for o in f.outputs if o.name == name)) for f in result.formats]
            ax.bar(x + (j - (len(outputs) - 1) / 2) * width, values, width, label=name)
        ax.set_xticks(x, formats, rotation=30, ha="right")
        ax.set_title(title, fontsize=10)
        if "log" in title:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, title="output", title_fontsize=7)
    fig.suptitle(f"{result.model_name}: error per format and output (vs FP32)", fontsize=11)
    return _save(plt, fig, path)


def _per_layer(plt, result: CompareResult, path: Path) -> Path | None:
    # layers equal to FP32 in every format (integer shape arithmetic, ops before the first quantizer) say nothing:
    # left out; a layer exact in one format only is a gap in that format's line
    changed = [n for n in result.layer_order
               if any(math.isfinite(db) for f in result.formats for name, db in f.layers if name == n)]
    if not changed:
        return None
    position = {name: i for i, name in enumerate(changed)}
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for f in result.formats:
        points = sorted((position[n], db if math.isfinite(db) else np.nan) for n, db in f.layers if n in position)
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", markersize=3, linewidth=1,
                    label=f.label)
    ax.set_xlabel(f"layer output in network order (FP32 graph; the {len(changed)} that differ from FP32)")
    ax.set_ylabel("SQNR vs FP32 (dB)")
    ax.set_title(f"{result.model_name}: per-layer SQNR along the network", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _histograms(plt, result: CompareResult, path: Path) -> Path:
    outputs = [o.name for o in result.formats[0].outputs]
    fig, axes = plt.subplots(1, len(outputs), figsize=(5 * len(outputs), 3.8), squeeze=False)
    for ax, name in zip(axes[0], outputs, strict=True):
        samples = {f.label: f.error_samples.get(name, np.zeros(0)) for f in result.formats}
        spread = max((float(np.percentile(np.abs(s), 99.9)) for s in samples.values() if s.size), default=1.0) or 1.0
        bins = np.linspace(-spread, spread, 81)
        for label, s in samples.items():
            ax.hist(np.clip(s, -spread, spread), bins=bins, histtype="step", linewidth=1.2, label=label)
        ax.set_yscale("log")
        ax.set_xlabel(f"error (format - FP32), clipped at the 99.9th percentile {spread:.3g}")
        ax.set_ylabel("count")
        ax.set_title(f"output {name}", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(f"{result.model_name}: error histograms", fontsize=11)
    return _save(plt, fig, path)


def _size(plt, result: CompareResult, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for k, f in enumerate(result.formats):
        x, y = f.model_bytes / 1e6, _finite(f.min_sqnr_db)
        ax.scatter([x], [y], s=40)
        # alternate label sides so formats of near-equal size and error stay readable
        ax.annotate(f.label, (x, y), textcoords="offset points", xytext=(6, 4) if k % 2 == 0 else (6, -11),
                    fontsize=8)
    ax.axvline(result.fp32_bytes / 1e6, color="gray", linestyle="--", linewidth=1)
    ax.annotate("FP32 size", (result.fp32_bytes / 1e6, ax.get_ylim()[0]), textcoords="offset points",
                xytext=(-50, 5), fontsize=8, color="gray")
    ax.set_xlabel("model file size (MB)")
    ax.set_ylabel("lowest output SQNR vs FP32 (dB)")
    ax.set_title(f"{result.model_name}: size vs error", fontsize=11)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)
