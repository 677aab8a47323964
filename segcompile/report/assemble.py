"""Reading what the earlier stages recorded, for report.json.

The stages write their own JSON files (export.json, quant_params.json, compile.json,
manifest.json); this module pulls out what the report shows — per-layer SQNR, calibration
frames, timings, target — and tolerates a stage that has not run (its part is just absent).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from segcompile.errors import SegcompileError

REPORT_VERSION = 1
STAGE_FILES = (("export", "export.json"), ("quantize", "quant_params.json"), ("compile", "compile.json"))
_ELAPSED_KEYS = ("elapsed_s", "elapsed_seconds", "seconds", "duration_s")


def read_json(path: Path, required: bool = False) -> dict[str, Any] | None:
    """A build-folder JSON file as a dict; None when absent and not required."""
    if not path.is_file():
        if required:
            raise SegcompileError(f"{path}: not found")
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SegcompileError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SegcompileError(f"{path}: expected a JSON object at the top level")
    return data


def quant_tensors(quant_params: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The per-tensor entries of quant_params.json (a list under ``tensors``, or a name -> entry map)."""
    if not quant_params:
        return []
    tensors = quant_params.get("tensors", [])
    if isinstance(tensors, dict):
        return [{"name": name, **entry} for name, entry in tensors.items()]
    return [t for t in tensors if isinstance(t, dict) and "name" in t]


def layer_errors(quant_params: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per quantized activation tensor: name and SQNR dB, worst first (report.json ``layers``)."""
    layers = []
    for entry in quant_tensors(quant_params):
        sqnr = entry.get("sqnr_db")
        if sqnr is None:
            continue
        local = entry.get("sqnr_local_db")
        layers.append({
            "name": entry["name"],
            "role": entry.get("role", "activation"),
            # sqnr_db: float vs the int8 graph (upstream error included); sqnr_local_db: this tensor alone.
            "sqnr_db": _finite(sqnr),
            "sqnr_local_db": _finite(local),
            "bits": entry.get("bits"),
            "source": entry.get("source"),
        })
    # Worst (lowest SQNR) first; tensors without a finite SQNR last.
    return sorted(layers, key=lambda lay: (lay["sqnr_db"] is None, lay["sqnr_db"] or 0.0, lay["name"]))


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def calibration_frames(quant_params: dict[str, Any] | None) -> list[str]:
    """Names of the frames the quantize stage calibrated on, wherever quant_params.json lists them."""
    if not quant_params:
        return []
    places = [quant_params, quant_params.get("settings") or {}, quant_params.get("calibration") or {}]
    for place in places:
        for key in ("frame_names", "calibration_frames", "frames_calibration", "frames"):
            value = place.get(key) if isinstance(place, dict) else None
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
    return []


def quantization_summary(quant_params: dict[str, Any] | None) -> dict[str, Any] | None:
    """Scheme, range method and frame count of the quantize stage (what a build comparison shows)."""
    if not quant_params:
        return None
    scheme = quant_params.get("scheme")
    return {
        "scheme": scheme.get("name") if isinstance(scheme, dict) else scheme,
        "method": quant_params.get("method"),
        "frames": calibration_count(quant_params),
    }


def stage_elapsed(record: dict[str, Any] | None) -> float | None:
    """The elapsed seconds a stage recorded about itself, if it did."""
    if not record:
        return None
    for place in (record, record.get("settings") or {}, record.get("timings") or {}):
        if not isinstance(place, dict):
            continue
        for key in _ELAPSED_KEYS:
            value = place.get(key)
            if isinstance(value, int | float):
                return float(value)
    return None


def calibration_count(quant_params: dict[str, Any] | None) -> int | None:
    """How many frames the quantize stage calibrated on (it takes them in order from its dataset)."""
    value = (quant_params or {}).get("frames")
    return value if isinstance(value, int) else None


def stage_timings(build_dir: Path) -> dict[str, float]:
    """Seconds per earlier stage, from the files those stages wrote (manifest.json ``timings`` first)."""
    manifest = read_json(build_dir / "manifest.json") or {}
    recorded = manifest.get("timings") if isinstance(manifest.get("timings"), dict) else {}
    timings = {k: float(v) for k, v in recorded.items() if isinstance(v, int | float) and k != "verify"}
    for stage, filename in STAGE_FILES:
        elapsed = stage_elapsed(read_json(build_dir / filename))
        if elapsed is not None and stage not in timings:
            timings[stage] = round(elapsed, 3)
    return timings


def build_identity(build_dir: Path) -> dict[str, Any]:
    """Model and target names for headings: from manifest.json, else compile.json / export.json."""
    manifest = read_json(build_dir / "manifest.json") or {}
    compiled = read_json(build_dir / "compile.json") or {}
    exported = read_json(build_dir / "export.json") or {}
    target = manifest.get("target") or compiled.get("target") or compiled.get("profile")
    if isinstance(target, dict):
        target = target.get("name")
    model = manifest.get("model") or exported.get("model") or (exported.get("model_info") or {}).get("name")
    if isinstance(model, dict):
        model = model.get("name")
    return {"target": target, "model": model}


def lowering_summary(build_dir: Path) -> dict[str, Any] | None:
    """What compile.json says ran as integer code and which ONNX nodes stayed float (with why)."""
    lowering = (read_json(build_dir / "compile.json") or {}).get("lowering")
    if not isinstance(lowering, dict):
        return None
    return {
        "integer_ops": lowering.get("integer_ops"),
        "float_ops": lowering.get("float_ops"),
        "float_nodes": [
            {"name": node.get("name"), "op_type": node.get("op_type"), "reason": node.get("reason")}
            for node in lowering.get("float_nodes") or []
        ],
    }
