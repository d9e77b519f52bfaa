"""A PNG of per-layer SQNR along the network (``validate --per-layer --plot``, the ``quantize --report x.md`` figure).

Needs matplotlib (the ``plots`` extra); :func:`plots_available` says whether it is installed, and
:data:`HOW_TO_GET_PLOTS` is the one line to show when it is not. The figure is drawn with matplotlib's object API on
an Agg canvas (no pyplot global state, no display needed) and written atomically.
"""

from __future__ import annotations

import importlib.util
import io
import math
import os
from pathlib import Path

from onnxq.atomic import write_bytes_atomic
from onnxq.validate.compare import ComparisonReport

HOW_TO_GET_PLOTS = 'plots need matplotlib: pip install "onnxq[plots]"'


def plots_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def layer_sqnr_png(report: ComparisonReport, title: str = "per-layer SQNR") -> bytes:
    """The PNG bytes: SQNR (dB) of every compared layer in graph order, the outputs' SQNR as dashed lines, the five
    worst layers labelled. Infinite SQNR (an exact layer) is drawn at the top of the axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from onnxq.report import short_names

    layers = report.layers
    finite = [m.sqnr_db for m in layers if math.isfinite(m.sqnr_db)]
    finite += [o.sqnr_db for o in report.outputs if math.isfinite(o.sqnr_db)]
    top = (max(finite) if finite else 60.0) + 5.0
    values = [m.sqnr_db if math.isfinite(m.sqnr_db) else top for m in layers]
    fig = Figure(figsize=(max(8.0, min(18.0, 0.12 * len(layers) + 6.0)), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(range(len(values)), values, marker="o", markersize=3, linewidth=1, label="layer output")
    for i, output in enumerate(report.outputs):
        if math.isfinite(output.sqnr_db):
            ax.axhline(output.sqnr_db, linestyle="--", linewidth=0.8, color=f"C{(i % 8) + 1}",
                       label=f"output {short_names([output.name], 30)[0]}: {output.sqnr_db:.1f} dB")
    worst = report.worst_layers(5)
    for m in worst:
        i = layers.index(m)
        ax.annotate(f"#{i}", (i, values[i]), textcoords="offset points", xytext=(3, -10), fontsize=7)
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("SQNR dB (higher is better)")
    ax.set_title(f"{title}: {len(layers)} layers, {report.batches} batch(es)")
    ax.grid(True, linewidth=0.3)
    if report.outputs:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    names = short_names([m.name for m in layers], 60)
    worst_text = "worst: " + "   ".join(f"#{layers.index(m)} {names[layers.index(m)]} ({m.sqnr_db:.1f} dB)"
                                         for m in worst[:3])
    fig.text(0.01, 0.01, worst_text, fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_layer_sqnr_plot(report: ComparisonReport, path: str | os.PathLike, title: str = "per-layer SQNR") -> Path:
    return write_bytes_atomic(path, layer_sqnr_png(report, title))
