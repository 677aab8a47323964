"""The two ONNX files a benchmark or a tuning run needs, from a build folder or from a zoo model.

A folder that already holds ``float.onnx`` and ``int8.qdq.onnx`` (e.g. a ``segcompile build`` output) is
used as it is; a zoo name is exported and quantized here, and the time of each stage and the calibration
throughput are recorded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segcompile.errors import SegcompileError

FLOAT_ONNX = "float.onnx"
QDQ_ONNX = "int8.qdq.onnx"


@dataclass(frozen=True)
class PreparedModel:
    """float + QDQ ONNX of one model, with what preparing them cost (empty when they already existed)."""

    name: str
    float_onnx: Path
    qdq_onnx: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None


def prepare_model(
    model: str,
    work_dir: Path | str,
    size: tuple[int, int] | None = None,
    calib: str = "demo:calib",
    frames: int = 8,
    progress: bool | None = None,
) -> PreparedModel:
    """``model`` is a folder with float.onnx + int8.qdq.onnx, or a zoo name exported at ``size`` (w, h)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        float_onnx, qdq_onnx = folder / FLOAT_ONNX, folder / QDQ_ONNX
        for path in (float_onnx, qdq_onnx):
            if not path.is_file():
                raise SegcompileError(f"{folder}: no {path.name} (run `segcompile build` into it first)")
        return PreparedModel(_model_name(qdq_onnx, folder), float_onnx, qdq_onnx)
    if folder.suffix or "/" in model:
        raise SegcompileError(f"{model}: no such folder (MODEL is a build folder or a zoo name)")

    from segcompile.export.config import ExportConfig
    from segcompile.export.stage import run_export
    from segcompile.quantize.stage import QuantizeConfig, run_quantize
    from segcompile.zoo.registry import get_entry

    get_entry(model)  # a SegcompileError naming the unknown model comes before any work
    work_dir = Path(work_dir)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    exported = run_export(ExportConfig(model=model, input_size=size), work_dir)
    seconds["export"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    quantized = run_quantize(
        QuantizeConfig(frames=frames, progress=progress),
        exported.onnx_path,
        calibration_frames(exported.onnx_path, calib),
        work_dir,
    )
    seconds["quantize"] = round(time.perf_counter() - start, 3)
    calibration = {
        "dataset": calib,
        "frames": quantized.frames_used,
        "seconds": seconds["quantize"],
        # The whole quantize stage (weights, calibration, bias correction, SQNR) per calibration frame.
        "frames_per_second": round(quantized.frames_used / seconds["quantize"], 3),
    }
    label = model if size is None else f"{model}@{size[0]}x{size[1]}"
    return PreparedModel(label, exported.onnx_path, quantized.qdq_onnx, seconds, calibration)


def calibration_frames(float_onnx: Path, spec: str) -> Iterator[np.ndarray]:
    """Preprocessed frames of dataset ``spec`` for the model in ``float_onnx`` (read lazily)."""
    import onnx

    from segcompile.data.preprocess import preprocess
    from segcompile.data.spec import open_dataset
    from segcompile.modelinfo import read_model_info

    info = read_model_info(onnx.load(str(float_onnx), load_external_data=False), str(float_onnx))
    dataset = open_dataset(spec, role="calib")
    for frame in dataset:
        yield preprocess(frame.image, info)


def _model_name(qdq_onnx: Path, folder: Path) -> str:
    """The model's name from its ModelInfo (what export recorded), else the folder's name."""
    import onnx

    from segcompile.modelinfo import read_model_info

    try:
        return read_model_info(onnx.load(str(qdq_onnx), load_external_data=False), str(qdq_onnx)).name
    except SegcompileError:
        return folder.resolve().name
