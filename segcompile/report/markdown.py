"""report.md: the report as plain Markdown tables, readable in a terminal or on a forge."""

from __future__ import annotations

from typing import Any

MAX_LAYER_ROWS = 20


def fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    """A number for a table cell; '-' for missing values."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _quantization(report: dict[str, Any]) -> str:
    quant = report.get("quantization") or {}
    if not quant:
        return "-"
    return f"{quant.get('scheme') or '?'} / {quant.get('method') or '?'}"


def class_drop(entry: dict[str, Any]) -> float | None:
    """Float minus int8 IoU of one ``per_class`` entry, in points (None if either is undefined)."""
    if entry.get("float_iou") is None or entry.get("int8_iou") is None:
        return None
    return entry["float_iou"] - entry["int8_iou"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def headline_rows(report: dict[str, Any]) -> list[list[str]]:
    """The key numbers as (label, value) rows; shared by markdown, html and the build comparison."""
    rows = [
        ["model", fmt(report.get("model") or report.get("model_info", {}).get("name"))],
        ["target", fmt(report.get("target"))],
        ["float mIoU (%)", fmt(report.get("float_miou"))],
        ["int8 mIoU (%)", fmt(report.get("int8_miou"))],
        ["mIoU drop (points)", fmt(report.get("miou_drop"))],
        ["pixel agreement float vs int8 (%)", fmt(report.get("pixel_agreement"), 3)],
        ["int8 runner", fmt(report.get("int8_runner"))],
        ["quantization (scheme / ranges)", _quantization(report)],
        ["evaluation frames", str(len(report.get("frames_eval", [])))],
        ["calibration frames", str(len(report.get("frames_calibration", [])))],
    ]
    comparison = report.get("comparison")
    if comparison:
        rows.append([f"{comparison['runner']} mIoU (%)", fmt(comparison.get("miou"))])
    gate = report.get("gate")
    if gate:
        verdict = "passed" if gate["passed"] else "FAILED"
        rows.append(["gate (--max-drop)", f"{fmt(gate['max_drop'])}: {verdict}"])
    return rows


def to_markdown(report: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    title = report.get("model") or report.get("model_info", {}).get("name") or "model"
    if report.get("target"):
        title += f" on {report['target']}"
    lines = [f"# segcompile report: {title}", ""]
    lines += _table(["", "value"], headline_rows(report)) + [""]
    lines += ["## How it was measured", "", report.get("metric", ""), ""]
    info = report.get("model_info", {})
    if info.get("output_kind") == "probability":
        lines += [f"Binary model: foreground where the output exceeds {info.get('threshold')}.", ""]

    lines += ["## Per-class IoU (%)", ""]
    rows = [
        [c["name"], fmt(c.get("float_iou")), fmt(c.get("int8_iou")), fmt(class_drop(c)),
         str(c.get("pixels", "-"))]
        for c in report.get("per_class", [])
    ]
    lines += _table(["class", "float", "int8", "drop", "labelled pixels"], rows) + [""]
    lines += ["Classes absent from both labels and predictions show '-' and are left out of the mean.", ""]

    fallback = report.get("fallback")
    if fallback:
        lines += ["## Accuracy-aware fallback", ""]
        verdict = "within" if fallback["passed"] else "still over"
        lines += [
            f"The int8 drop was {fmt(fallback['initial_drop'])} points (budget {fmt(fallback['max_drop'])}). "
            f"Moving {len(fallback['layers_moved'])} layer(s) to {fallback['precision']} gives "
            f"{fmt(fallback['final_drop'])} points ({verdict} budget), at a cost of "
            f"{fallback['macs_moved']:,} MACs ({fmt(fallback['macs_moved_percent'])} % "
            f"of {fallback['macs_total']:,}) out of int8.",
            "",
        ]
        extra = sorted(set(fallback.get("float_nodes", [])) - set(fallback["layers_moved"]))
        if extra:
            lines += ["Their consumers then read a float tensor and compute in float too (counted in the "
                      f"cost): {', '.join(extra)}.", ""]
        if fallback.get("accepted_build"):
            lines += [f"Accepted build: `{fallback['accepted_build']}/` (its own report.json has the full "
                      "numbers); this folder keeps the all-int8 model.", ""]
        if fallback.get("screened_by"):
            lines += [f"Candidates were screened with {fallback['screened_by']}; the accepted one was "
                      f"compiled and its drop measured with {fallback['confirmed_by']}.", ""]
        steps = [
            [str(i + 1), ", ".join(s["excluded"]), fmt(s["miou_drop"]), f"{s['macs_moved']:,}",
             s["build_dir"]]
            for i, s in enumerate(fallback["steps"])
        ]
        header = ["step", "layers out of int8", "drop (points)", "MACs moved", "candidate"]
        lines += _table(header, steps) + [""]

    layers = report.get("layers", [])
    lines += ["## Per-layer quantization error (worst first)", ""]
    if layers:
        rows = [[x["name"], fmt(x.get("sqnr_db")), fmt(x.get("sqnr_local_db")), fmt(x.get("bits"))]
                for x in layers[:MAX_LAYER_ROWS]]
        lines += _table(["tensor", "SQNR (dB)", "local SQNR (dB)", "bits"], rows)
        lines += ["", "SQNR compares the float tensor with the int8 graph's (upstream error included); "
                  "local SQNR quantizes the float tensor alone."]
        if len(layers) > MAX_LAYER_ROWS:
            lines += ["", f"... and {len(layers) - MAX_LAYER_ROWS} more in report.json."]
    else:
        lines += ["quant_params.json has no per-tensor SQNR."]
    lines += [""]

    lowering = report.get("integer_lowering")
    if lowering:
        lines += ["## Integer code", ""]
        float_nodes = lowering.get("float_nodes") or []
        lines += [f"{lowering.get('integer_ops')} operators run as integer code; "
                  f"{len(float_nodes)} stay float on the ARM core" + (":" if float_nodes else "."), ""]
        if float_nodes:
            rows = [[node["name"], node["op_type"], node["reason"]] for node in float_nodes]
            lines += _table(["node", "operator", "why it stays float"], rows) + [""]

    lines += ["## Timings (s)", ""]
    timings = [[k, fmt(v, 3)] for k, v in report.get("timings", {}).items()]
    lines += _table(["stage", "seconds"], timings) + [""]

    lines += ["## Frames", ""]
    lines += [f"Evaluation ({len(report.get('frames_eval', []))}, from {report.get('eval_dataset') or '?'}): "
              + ", ".join(report.get("frames_eval", [])), ""]
    lines += [f"Calibration ({len(report.get('frames_calibration', []))}): "
              + (", ".join(report.get("frames_calibration", [])) or "not recorded"), ""]
    if report.get("frames_excluded_overlap"):
        lines += ["Left out of evaluation because calibration used them: "
                  + ", ".join(report["frames_excluded_overlap"]), ""]
    if report.get("frames_skipped"):
        lines += [f"Skipped by the dataset reader ({len(report['frames_skipped'])}): "
                  + "; ".join(f"{item['name']} ({item['reason']})" for item in report["frames_skipped"]), ""]
    lines += ["Plots and sample pictures: report.html.", ""]
    return "\n".join(lines)
