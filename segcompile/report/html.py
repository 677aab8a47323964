"""report.html: one self-contained page (inline CSS, plots as base64 PNG, no external URLs)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segcompile.report import plots
from segcompile.report.markdown import MAX_LAYER_ROWS, class_drop, fmt, headline_rows

STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.9em; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bad { color: #b00; font-weight: bold; } .good { color: #070; font-weight: bold; }
img { max-width: 100%; } .note { color: #555; font-size: 0.9em; }
"""


def img_tag(png: bytes, alt: str) -> str:
    """An <img> carrying the PNG inline."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="{"num" if i >= numeric_from else "text"}">{html.escape(cell)}</td>'
            for i, cell in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _load_png(build_dir: Path, relative: str | None) -> np.ndarray | None:
    if not relative or not (build_dir / relative).is_file():
        return None
    return np.asarray(Image.open(build_dir / relative))


def to_html(report: dict[str, Any], build_dir: Path) -> str:
    """The whole report as one HTML page; sample pictures are read from the build folder."""
    title = report.get("model") or report.get("model_info", {}).get("name") or "model"
    if report.get("target"):
        title += f" on {report['target']}"
    class_names = [c["name"] for c in report.get("per_class", [])]
    parts = [f"<h1>segcompile report: {html.escape(title)}</h1>"]
    gate = report.get("gate")
    if gate:
        css = "good" if gate["passed"] else "bad"
        verdict = "passed" if gate["passed"] else "FAILED"
        parts.append(f'<p class="{css}">Accuracy gate --max-drop {gate["max_drop"]}: {verdict}</p>')
    parts.append(_table(["", "value"], headline_rows(report)))
    parts.append(f'<p class="note">{html.escape(report.get("metric", ""))}</p>')

    parts.append("<h2>Per-class IoU</h2>")
    parts.append(img_tag(plots.per_class_iou(report.get("per_class", [])), "per-class IoU float vs int8"))
    parts.append(_table(
        ["class", "float IoU (%)", "int8 IoU (%)", "drop (points)", "labelled pixels"],
        [[c["name"], fmt(c.get("float_iou")), fmt(c.get("int8_iou")),
          fmt(class_drop(c)), str(c.get("pixels", "-"))]
         for c in report.get("per_class", [])],
    ))

    fallback = report.get("fallback")
    if fallback:
        parts.append("<h2>Accuracy-aware fallback</h2>")
        parts.append(
            f"<p>Drop {fmt(fallback['initial_drop'])} → {fmt(fallback['final_drop'])} points "
            f"(budget {fmt(fallback['max_drop'])}) by moving "
            f"{html.escape(', '.join(fallback['layers_moved']))} "
            f"to {html.escape(fallback['precision'])}: {fallback['macs_moved']:,} MACs "
            f"({fmt(fallback['macs_moved_percent'])} %) out of int8.</p>"
        )
        parts.append(_table(
            ["step", "layers out of int8", "drop (points)", "MACs moved"],
            [[str(i + 1), ", ".join(s["excluded"]), fmt(s["miou_drop"]), f"{s['macs_moved']:,}"]
             for i, s in enumerate(fallback["steps"])],
        ))

    parts.append("<h2>Per-layer quantization error</h2>")
    layers = report.get("layers", [])
    sqnr_png = plots.layer_sqnr(layers)
    if sqnr_png is not None:
        parts.append(img_tag(sqnr_png, "per-layer SQNR"))
        rows = [[x["name"], fmt(x.get("sqnr_db")), fmt(x.get("sqnr_local_db")), fmt(x.get("bits"))]
                for x in layers[:MAX_LAYER_ROWS]]
        parts.append(_table(["tensor", "SQNR (dB)", "local SQNR (dB)", "bits"], rows))
    else:
        parts.append("<p>quant_params.json has no per-tensor SQNR.</p>")

    samples = report.get("samples", [])
    if samples:
        parts.append("<h2>Samples</h2>")
        parts.append(img_tag(plots.class_legend(class_names), "class colours"))
        for sample in samples:
            image = _load_png(build_dir, sample.get("image"))
            float_pred = _load_png(build_dir, sample.get("float"))
            int8_pred = _load_png(build_dir, sample.get("int8"))
            if image is None or float_pred is None or int8_pred is None:
                parts.append(f"<p>sample {html.escape(sample['name'])}: pictures missing</p>")
                continue
            strip = plots.sample_strip(image, _load_png(build_dir, sample.get("mask")), float_pred, int8_pred,
                                       len(class_names), sample["name"])
            parts.append(img_tag(strip, f"sample {sample['name']}"))

    lowering = report.get("integer_lowering")
    if lowering:
        float_nodes = lowering.get("float_nodes") or []
        parts.append("<h2>Integer code</h2>")
        parts.append(f"<p>{lowering.get('integer_ops')} operators run as integer code; "
                     f"{len(float_nodes)} stay float on the ARM core.</p>")
        if float_nodes:
            rows = [[node["name"], node["op_type"], node["reason"]] for node in float_nodes]
            parts.append(_table(["node", "operator", "why it stays float"], rows, numeric_from=3))

    parts.append("<h2>Timings</h2>")
    parts.append(_table(["stage", "seconds"], [[k, fmt(v, 3)] for k, v in report.get("timings", {}).items()]))
    parts.append("<h2>Frames</h2>")
    parts.append(f"<p>Evaluation ({len(report.get('frames_eval', []))}, "
                 f"{html.escape(str(report.get('eval_dataset') or '?'))}): "
                 f"{html.escape(', '.join(report.get('frames_eval', [])))}</p>")
    calibration = ", ".join(report.get("frames_calibration", [])) or "not recorded"
    count = len(report.get("frames_calibration", []))
    parts.append(f"<p>Calibration ({count}): {html.escape(calibration)}</p>")
    if report.get("frames_excluded_overlap"):
        parts.append("<p>Left out of evaluation because calibration used them: "
                     f"{html.escape(', '.join(report['frames_excluded_overlap']))}</p>")
    return page(f"segcompile report: {title}", "\n".join(parts))


def page(title: str, body: str) -> str:
    """Wrap ``body`` in a complete HTML document with the inline style sheet."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
