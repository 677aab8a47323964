"""``segcompile report a/ b/``: builds side by side (two targets, two calibration methods, ...)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segcompile.errors import SegcompileError
from segcompile.report import plots
from segcompile.report.html import img_tag, page
from segcompile.report.markdown import fmt
from segcompile.report.stage import load_report

ROWS = (
    ("target", "target", None),
    ("int8 runner", "int8_runner", None),
    ("float mIoU (%)", "float_miou", 2),
    ("int8 mIoU (%)", "int8_miou", 2),
    ("mIoU drop (points)", "miou_drop", 2),
    ("pixel agreement (%)", "pixel_agreement", 3),
)


def _label(build_dir: Path) -> str:
    return build_dir.name or str(build_dir)


def comparison_rows(reports: Sequence[tuple[Path, dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the side-by-side table: one column per build."""
    header = ["", *[_label(d) for d, _ in reports]]
    rows = [["model", *[fmt(r.get("model") or r.get("model_info", {}).get("name")) for _, r in reports]]]
    rows += [[label, *[fmt(r.get(key), digits or 2) for _, r in reports]] for label, key, digits in ROWS]
    for label, key in (("quantization scheme", "scheme"), ("calibration method", "method")):
        rows.append([label, *[fmt((r.get("quantization") or {}).get(key)) for _, r in reports]])
    if any(r.get("fallback") for _, r in reports):
        rows.append(["drop after fallback (points)",
                     *[fmt((r.get("fallback") or {}).get("final_drop")) for _, r in reports]])
    rows.append(["eval frames", *[str(len(r.get("frames_eval", []))) for _, r in reports]])
    rows.append(["calibration frames", *[str(len(r.get("frames_calibration", []))) for _, r in reports]])
    stages = sorted({k for _, r in reports for k in r.get("timings", {})})
    for stage in stages:
        rows.append([f"{stage} (s)", *[fmt(r.get("timings", {}).get(stage), 3) for _, r in reports]])
    names = [c["name"] for c in reports[0][1].get("per_class", [])]
    for name in names:
        cells = []
        for _, report in reports:
            entry = next((c for c in report.get("per_class", []) if c["name"] == name), {})
            cells.append(fmt(entry.get("int8_iou")))
        rows.append([f"int8 IoU {name} (%)", *cells])
    return header, rows


def load_reports(build_dirs: Sequence[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """The report.json of each build; they must evaluate the same classes to be comparable."""
    if len(build_dirs) < 2:
        raise SegcompileError("comparing needs at least two build folders")
    reports = [(Path(d), load_report(d)) for d in build_dirs]
    first = [c["name"] for c in reports[0][1].get("per_class", [])]
    for build_dir, report in reports[1:]:
        if [c["name"] for c in report.get("per_class", [])] != first:
            raise SegcompileError(
                f"{build_dir}/report.json: its classes differ from {reports[0][0]}/report.json; "
                "only builds of the same model classes can be compared"
            )
    return reports


def compare_markdown(build_dirs: Sequence[Path]) -> str:
    """The comparison as a Markdown table."""
    header, rows = comparison_rows(load_reports(build_dirs))
    lines = ["# segcompile comparison", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    frames = {tuple(r.get("frames_eval", [])) for _, r in load_reports(build_dirs)}
    if len(frames) > 1:
        lines += ["", "Note: the builds were evaluated on different frames; mIoU is not directly comparable."]
    return "\n".join(lines) + "\n"


def compare_html(build_dirs: Sequence[Path]) -> str:
    """The comparison as a self-contained HTML page with a per-class plot."""
    reports = load_reports(build_dirs)
    header, rows = comparison_rows(reports)
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    table += "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    table += "</table>"
    plot = plots.compare_iou([(_label(d), r.get("per_class", [])) for d, r in reports])
    return page("segcompile comparison", f"<h1>segcompile comparison</h1>{table}{img_tag(plot, 'int8 IoU')}")
