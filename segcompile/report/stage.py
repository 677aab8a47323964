"""The report stage: report.md + report.html from a build folder's report.json, and the terminal summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segcompile.artifacts import write_bytes_atomic
from segcompile.errors import SegcompileError
from segcompile.report.assemble import read_json
from segcompile.report.html import to_html
from segcompile.report.markdown import fmt, to_markdown

SUMMARY_CLASSES = 3
SUMMARY_LAYERS = 3


def load_report(build_dir: Path | str) -> dict[str, Any]:
    """A build folder's report.json (written by the verify stage)."""
    path = Path(build_dir) / "report.json"
    report = read_json(path)
    if report is None:
        raise SegcompileError(f"{path}: not found; run `segcompile verify {build_dir} --eval DATA` first")
    return report


def write_report(build_dir: Path | str) -> list[Path]:
    """Write report.md and report.html beside report.json; returns their paths."""
    build_dir = Path(build_dir)
    report = load_report(build_dir)
    markdown = write_bytes_atomic(build_dir / "report.md", to_markdown(report).encode())
    page = write_bytes_atomic(build_dir / "report.html", to_html(report, build_dir).encode())
    return [markdown, page]


def summary_text(report: dict[str, Any]) -> str:
    """One screen for the terminal: headline numbers, worst classes and layers, gate and fallback."""
    name = report.get("model") or report.get("model_info", {}).get("name") or "model"
    target = f" on {report['target']}" if report.get("target") else ""
    lines = [
        f"segcompile verify: {name}{target}",
        f"  float mIoU {fmt(report.get('float_miou'))} %   int8 mIoU {fmt(report.get('int8_miou'))} %   "
        f"drop {fmt(report.get('miou_drop'))} points   ({report.get('int8_runner')})",
        f"  pixel agreement float vs int8 {fmt(report.get('pixel_agreement'), 3)} %   "
        f"eval frames {len(report.get('frames_eval', []))}   "
        f"calibration frames {len(report.get('frames_calibration', []))}",
    ]
    if report.get("frames_excluded_overlap"):
        overlap = len(report["frames_excluded_overlap"])
        lines.append(f"  {overlap} evaluation frame(s) left out because calibration used them")
    comparison = report.get("comparison")
    if comparison:
        lines.append(f"  {comparison['runner']}: mIoU {fmt(comparison.get('miou'))} % "
                     f"(drop {fmt(comparison.get('miou_drop'))} points)")
    drops = [
        (c["float_iou"] - c["int8_iou"], c["name"]) for c in report.get("per_class", [])
        if c.get("float_iou") is not None and c.get("int8_iou") is not None
    ]
    if drops:
        worst = sorted(drops, key=lambda d: (-d[0], d[1]))[:SUMMARY_CLASSES]
        lines.append("  largest class drops: " + ", ".join(f"{n} {d:+.2f}" for d, n in worst))
    layers = [x for x in report.get("layers", []) if x.get("sqnr_db") is not None][:SUMMARY_LAYERS]
    if layers:
        lines.append("  lowest SQNR:")
        lines += [f"    {x['sqnr_db']:6.1f} dB  {_clip(x['name'], 90)}" for x in layers]
    fallback = report.get("fallback")
    if fallback:
        checked = f" (checked with {fallback['confirmed_by']})" if fallback.get("confirmed_by") else ""
        lines.append(
            f"  fallback: {len(fallback['layers_moved'])} layer(s) to {fallback['precision']}, drop "
            f"{fmt(fallback['initial_drop'])} -> {fmt(fallback['final_drop'])} points, "
            f"{fmt(fallback['macs_moved_percent'])} % of MACs{checked}"
        )
        lines += [f"    {_clip(name, 100)}" for name in fallback["layers_moved"][:SUMMARY_LAYERS]]
        if len(fallback["layers_moved"]) > SUMMARY_LAYERS:
            lines.append(f"    ... {len(fallback['layers_moved']) - SUMMARY_LAYERS} more in report.md")
        if fallback.get("accepted_build"):
            lines.append(f"    accepted build: {fallback['accepted_build']}/")
    gate = report.get("gate")
    if gate:
        lines.append(f"  gate --max-drop {gate['max_drop']}: {'passed' if gate['passed'] else 'FAILED'}")
    timings = report.get("timings", {})
    stages = {k: v for k, v in timings.items() if not k.startswith("verify_")}
    inference = {k.removeprefix("verify_").removesuffix("_inference"): v
                 for k, v in timings.items() if k.startswith("verify_")}
    if stages:
        lines.append("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    if inference:
        lines.append("  verify inference seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in inference.items()))
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    """Keep the end of a long tensor name (its distinctive part) within ``width`` characters."""
    return text if len(text) <= width else "..." + text[-(width - 3):]
