"""Quantization-aware fine-tuning: the zoo model wrapped in the target's fake quantization.

The wrapping itself (:mod:`segcompile.quantize.qat`) matches the integer kernels exactly;
this module only drives it with the ordinary training loop and exports QDQ ONNX whose
ranges `segcompile quantize` keeps.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from segcompile.data.preprocess import preprocess
from segcompile.modelinfo import ModelInfo
from segcompile.quantize.qat import export_qat_onnx, observe_qat, prepare_qat
from segcompile.quantize.scheme import QuantScheme
from segcompile.train.loop import TrainConfig, TrainResult, train_model

# Frames used to seed the activation ranges before fine-tuning (post-training-calibration start).
OBSERVE_FRAMES = 16


def finetune_qat(
    model: torch.nn.Module,
    scheme: QuantScheme,
    train_set,
    info: ModelInfo,
    config: TrainConfig,
    out_onnx: Path,
    eval_set=None,
) -> TrainResult:
    """Wrap ``model`` in fake quantization for ``scheme``, fine-tune it, export QDQ ONNX to ``out_onnx``."""
    width, height = info.input_size
    qat_model = prepare_qat(model, scheme, input_shape=(1, 3, height, width))
    seed_frames = min(OBSERVE_FRAMES, len(train_set))
    observe_qat(qat_model, (preprocess(train_set[i].image, info) for i in range(seed_frames)))
    result = train_model(qat_model, train_set, info, config, eval_set)
    qat_info = dataclasses.replace(info, extra={**info.extra, "qat_scheme": scheme.name})
    export_qat_onnx(qat_model, Path(out_onnx), model_info=qat_info)
    return result
