"""Benchmark results on disk: one JSON file per (model, profile) and a markdown table over all of them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from segcompile.artifacts import write_bytes_atomic, write_json_atomic
from segcompile.errors import SegcompileError
from segcompile.perf.bench import RATIOS, SCHEMA

# Top-level keys every result carries, with their JSON types (what check_result enforces).
REQUIRED = {
    "schema": str,
    "model": str,
    "profile": str,
    "target": dict,
    "input_shape": list,
    "compile_seconds": dict,
    "tuning": dict,
    "runs": list,
    "goal": dict,
    "machine": dict,
    "versions": dict,
}
RUN_REQUIRED = {"threads": int, "latency": dict, "peak_rss_mib": dict, "ratios": dict, "agreement": dict}
LATENCY_REQUIRED = ("median_ms", "min_ms", "max_ms", "repeats", "warmup")


def check_result(result: Any, source: str = "result") -> dict:
    """Fail with a SegcompileError naming the first missing or mistyped field of a bench result."""
    if not isinstance(result, dict):
        raise SegcompileError(f"{source}: a bench result is a JSON object")
    _check_fields(result, REQUIRED, source)
    if result["schema"] != SCHEMA:
        raise SegcompileError(f"{source}: schema {result['schema']!r}, expected {SCHEMA!r}")
    for i, run in enumerate(result["runs"]):
        where = f"{source}: runs[{i}]"
        _check_fields(run, RUN_REQUIRED, where)
        for name, stats in run["latency"].items():
            for key in LATENCY_REQUIRED:
                if not isinstance(stats.get(key), int | float):
                    raise SegcompileError(f"{where}.latency.{name}: missing number {key}")
        for label in RATIOS:
            if label not in run["ratios"]:
                raise SegcompileError(f"{where}.ratios: missing {label}")
    return result


def result_filename(result: dict) -> str:
    """``<model>__<profile>[__<mcpu override>].json``, anything outside [A-Za-z0-9._-] replaced."""
    mcpu = (result.get("config") or {}).get("mcpu")
    stem = f"{result['model']}__{result['profile']}" + (f"__{mcpu}" if mcpu else "")
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) + ".json"


def write_result(result: dict, out_dir: Path | str) -> Path:
    """Check ``result`` and write it to ``out_dir`` (atomically); its path."""
    check_result(result)
    return write_json_atomic(Path(out_dir) / result_filename(result), result)


def load_results(folder: Path | str) -> list[dict]:
    """Every bench result JSON in ``folder`` (other JSON files there are skipped), sorted by file name."""
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise SegcompileError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(data, dict) and data.get("schema") == SCHEMA:
            out.append(check_result(data, str(path)))
    return out


def _fmt(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.3g}{unit}"


def markdown_table(results: list[dict]) -> str:
    """Latency table: a row per (model, threads), TVM/onnxruntime ratios first (what the README quotes)."""
    lines = [
        "| model | input | target | threads | TVM int8 / ORT int8 | TVM float / ORT float "
        "| ORT int8 ms | TVM int8 ms | ORT float ms | TVM float ms | tuned kernels (int8/float) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        shape = result["input_shape"]
        size = f"{shape[-1]}x{shape[-2]}" if len(shape) == 4 else "x".join(map(str, shape))
        target = result["target"].get("mcpu") or result["target"].get("kind", "")
        tuned = "/".join(str(result["tuning"].get(k, {}).get("records", 0)) for k in ("int8", "float"))
        for run in result["runs"]:
            lat = run["latency"]

            def median(name: str, lat=lat) -> float | None:
                return lat[name]["median_ms"] if name in lat else None

            lines.append(
                f"| {result['model']} | {size} | {result['profile']} ({target}) | {run['threads']} "
                f"| {_fmt(run['ratios'].get('tvm_int8/ort_int8'), 'x')} "
                f"| {_fmt(run['ratios'].get('tvm_float/ort_float'), 'x')} "
                f"| {_fmt(median('ort_int8'))} | {_fmt(median('tvm_int8'))} "
                f"| {_fmt(median('ort_float'))} | {_fmt(median('tvm_float'))} | {tuned} |"
            )
    return "\n".join(lines) + "\n"


def cost_table(results: list[dict]) -> str:
    """Compile time per stage and calibration throughput, one row per model."""
    stages = sorted({k for r in results for k in r["compile_seconds"]})
    lines = [
        "| model | " + " | ".join(f"{s} s" for s in stages) + " | calibration frames/s |",
        "|---|" + "---|" * (len(stages) + 1),
    ]
    for result in results:
        cal = result.get("calibration") or {}
        cells = [_fmt(result["compile_seconds"].get(s)) for s in stages]
        label = f"{result['model']} ({result['target'].get('mcpu') or result['target'].get('kind')})"
        rate = _fmt(cal.get("frames_per_second"))
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {rate} |")
    return "\n".join(lines) + "\n"


def write_markdown(results: list[dict], path: Path | str, notes: str = "") -> Path:
    """The benchmark tables (plus ``notes``: where the goal stands and what limits it) as markdown."""
    text = "# Benchmarks\n\n" + (notes.strip() + "\n\n" if notes else "")
    text += "## Latency (median, warm-up excluded; ratio < 1 means TVM is faster)\n\n" + markdown_table(
        results
    )
    text += "\n## Compile time per stage and calibration throughput\n\n" + cost_table(results)
    return write_bytes_atomic(Path(path), text.encode())


def _check_fields(obj: Any, fields: dict, where: str) -> None:
    if not isinstance(obj, dict):
        raise SegcompileError(f"{where}: expected an object")
    for key, kind in fields.items():
        if key not in obj:
            raise SegcompileError(f"{where}: missing field {key!r}")
        if not isinstance(obj[key], kind):
            raise SegcompileError(f"{where}: field {key!r} should be {kind.__name__}")
