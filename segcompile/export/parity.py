"""How far the exported ONNX model is from its reference, measured on a real input."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from segcompile.errors import SegcompileError
from segcompile.export.messages import short_reason
from segcompile.modelinfo import ModelInfo


@dataclass(frozen=True)
class ParityReport:
    """Differences between reference logits and the exported model's logits on one input."""

    reference: str
    candidate: str
    input_source: str
    max_abs_diff: float
    mean_abs_diff: float
    argmax_agreement: float  # fraction of pixels whose predicted class is the same

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def torch_logits(module: nn.Module, batch: np.ndarray) -> np.ndarray:
    """Run the torch module (eval, no grad) on a float32 NCHW batch."""
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(batch))).numpy()


def onnxruntime_logits(model_bytes: bytes, batch: np.ndarray, source: str) -> np.ndarray:
    """Run a serialized ONNX model with onnxruntime's CPU provider on a float32 NCHW batch."""
    options = ort.SessionOptions()
    # One thread: the numbers must not depend on how work is split, and the machine is shared.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: batch}
        return session.run(None, feed)[0]
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise SegcompileError(f"{source}: onnxruntime cannot run the model ({short_reason(exc)})") from exc


def compare_logits(
    reference: np.ndarray, candidate: np.ndarray, info: ModelInfo, *,
    reference_name: str, candidate_name: str, input_source: str,
) -> ParityReport:
    """Max/mean absolute difference and per-pixel label agreement of two (1,C,H,W) outputs."""
    if reference.shape != candidate.shape:
        raise SegcompileError(
            f"{candidate_name} output shape {candidate.shape} differs from {reference_name} {reference.shape}"
        )
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    agreement = float(np.mean(_labels(reference, info) == _labels(candidate, info)))
    return ParityReport(
        reference=reference_name, candidate=candidate_name, input_source=input_source,
        max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()), argmax_agreement=agreement,
    )


def synthetic_image(width: int, height: int) -> np.ndarray:
    """A deterministic smooth RGB image (uint8 HxWx3) for when no real sample is given.

    Smooth gradients and low-frequency waves exercise every channel with natural-image-like
    statistics, unlike noise (which BN-folded nets see as out of distribution) or a flat colour.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    red = 0.5 + 0.5 * np.sin(2 * np.pi * (1.3 * u + 0.4 * v))
    green = 0.5 + 0.5 * np.cos(2 * np.pi * (0.6 * u - 1.1 * v))
    blue = 0.25 + 0.5 * u * v + 0.25 * np.sin(2 * np.pi * 2.2 * v)
    image = np.stack([red, green, blue], axis=-1)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _labels(logits: np.ndarray, info: ModelInfo) -> np.ndarray:
    logits = info.output_as_nchw(logits)
    if logits.shape[1] == 1:
        threshold = info.threshold if info.output_kind == "probability" else 0.0
        return logits[:, 0] > threshold
    return np.argmax(logits, axis=1)
