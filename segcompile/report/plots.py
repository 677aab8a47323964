"""The report's pictures, drawn with matplotlib and returned as PNG bytes.

Figures are built with the object API (Figure + Agg canvas), not pyplot, so nothing touches
global matplotlib state and no display is needed. Agg PNGs carry no timestamp, so the same
report draws byte-identical pictures.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from segcompile.data.classes import IGNORE_LABEL

FLOAT_COLOUR = "#4c72b0"
INT8_COLOUR = "#dd8452"
MAX_LAYERS_PLOTTED = 40


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def palette(num_classes: int) -> np.ndarray:
    """A fixed RGB colour per class id (tab20, then a deterministic spread); index 255 is black."""
    from matplotlib import colormaps

    colours = np.zeros((256, 3), dtype=np.uint8)
    tab = colormaps["tab20"]
    # Strong tab20 hues first (even entries), their light partners after: neighbouring ids stay distinct.
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    for cid in range(min(max(num_classes, 1), IGNORE_LABEL)):
        rgb = tab(order[cid % 20])[:3]
        colours[cid] = (np.array(rgb) * 255).round().astype(np.uint8)
    colours[IGNORE_LABEL] = 0
    return colours


def colourise(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """An RGB picture of a label map."""
    return palette(num_classes)[labels]


def per_class_iou(per_class: Sequence[dict[str, Any]]) -> bytes:
    """Grouped bars: float vs int8 IoU per class (classes never seen are left out)."""
    rows = [c for c in per_class if c.get("float_iou") is not None or c.get("int8_iou") is not None]
    names = [c["name"] for c in rows]
    floats = [c.get("float_iou") or 0.0 for c in rows]
    int8s = [c.get("int8_iou") or 0.0 for c in rows]
    figure = Figure(figsize=(max(5.0, 0.55 * len(rows) + 1.5), 3.4))
    axes = figure.add_subplot()
    x = np.arange(len(rows))
    axes.bar(x - 0.2, floats, 0.4, label="float", color=FLOAT_COLOUR)
    axes.bar(x + 0.2, int8s, 0.4, label="int8", color=INT8_COLOUR)
    axes.set_xticks(x, names, rotation=45, ha="right")
    axes.set_ylabel("IoU (%)")
    axes.set_ylim(0, 100)
    axes.set_title("Per-class IoU, float vs int8")
    axes.legend(loc="lower right")
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def layer_sqnr(layers: Sequence[dict[str, Any]]) -> bytes | None:
    """Horizontal bars of per-layer SQNR (worst at the top); None when there is nothing to plot."""
    rows = [layer for layer in layers if layer.get("sqnr_db") is not None][:MAX_LAYERS_PLOTTED]
    if not rows:
        return None
    figure = Figure(figsize=(7.0, max(2.0, 0.22 * len(rows) + 1.0)))
    axes = figure.add_subplot()
    y = np.arange(len(rows))
    values = [layer["sqnr_db"] for layer in rows]
    axes.barh(y, values, color=[INT8_COLOUR if v < 20 else FLOAT_COLOUR for v in values])
    axes.set_yticks(y, [layer["name"] for layer in rows], fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("SQNR (dB, float vs int8; higher is better)")
    axes.set_title(f"Per-layer quantization error ({len(rows)} worst tensors)")
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def sample_strip(
    image: np.ndarray,
    mask: np.ndarray | None,
    float_pred: np.ndarray,
    int8_pred: np.ndarray,
    num_classes: int,
    title: str,
) -> bytes:
    """Input, ground truth, float, int8 and their disagreement (red) side by side."""
    disagree = image.astype(np.float32) * 0.35
    disagree[float_pred != int8_pred] = (255, 30, 30)
    panels = [
        ("input", image),
        ("ground truth", colourise(mask, num_classes) if mask is not None else np.zeros_like(image)),
        ("float", colourise(float_pred, num_classes)),
        ("int8", colourise(int8_pred, num_classes)),
        (f"disagreement ({100.0 * np.mean(float_pred != int8_pred):.2f} %)", disagree.astype(np.uint8)),
    ]
    height, width = image.shape[:2]
    figure = Figure(figsize=(11.0, 11.0 / 5 * height / width + 0.5))
    for i, (label, picture) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), i + 1)
        axes.imshow(picture, interpolation="nearest")
        axes.set_title(label, fontsize=8)
        axes.axis("off")
    figure.suptitle(title, fontsize=9)
    return _png(figure)


def class_legend(names: Sequence[str]) -> bytes:
    """The colour of every class, for reading the sample pictures."""
    colours = palette(len(names))
    figure = Figure(figsize=(min(11.0, 1.4 * len(names) + 0.5), 0.5))
    axes = figure.add_subplot()
    for cid, name in enumerate(names):
        axes.add_patch(_patch(cid, colours[cid] / 255.0))
        axes.text(cid + 0.32, 0.5, name, va="center", fontsize=7)
    axes.set_xlim(0, len(names))
    axes.set_ylim(0, 1)
    axes.axis("off")
    return _png(figure)


def _patch(x: float, colour: np.ndarray):
    from matplotlib.patches import Rectangle

    return Rectangle((x, 0.2), 0.28, 0.6, color=colour)


def compare_iou(builds: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> bytes:
    """int8 IoU per class for several builds side by side."""
    names = [c["name"] for c in builds[0][1]]
    figure = Figure(figsize=(max(5.0, 0.6 * len(names) * max(1, len(builds)) / 2 + 1.5), 3.4))
    axes = figure.add_subplot()
    x = np.arange(len(names))
    width = 0.8 / max(1, len(builds))
    for i, (label, per_class) in enumerate(builds):
        by_name = {c["name"]: c.get("int8_iou") or 0.0 for c in per_class}
        axes.bar(x - 0.4 + width * (i + 0.5), [by_name.get(n, 0.0) for n in names], width, label=label)
    axes.set_xticks(x, names, rotation=45, ha="right")
    axes.set_ylabel("int8 IoU (%)")
    axes.set_ylim(0, 100)
    axes.legend(fontsize=7)
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)
