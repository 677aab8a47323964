"""Quantize stage: streaming calibration, target schemes, QDQ writing, bias correction, QAT, QAT import.

Post-training::

    from segcompile.quantize import QuantizeConfig, get_scheme, run_quantize
    result = run_quantize(QuantizeConfig(scheme=get_scheme("tda4vm"), method="entropy", frames=64),
                          build / "float.onnx", frames, build)   # frames: iterable of 1x3xHxW float32
    # -> build/int8.qdq.onnx, build/quant_params.json

Quantization-aware training (``segcompile.quantize.qat``; imports torch)::

    qat = prepare_qat(model, scheme, input_shape=(1, 3, H, W))   # BN folded, fake-quant inserted
    observe_qat(qat, batches)                                     # initial ranges (running min/max)
    ... train qat like the float model ...
    export_qat_onnx(qat, path, model_info=info)                   # QDQ ONNX; run_quantize keeps its ranges

Modules: scheme (formats and scale arithmetic), observers (streaming range statistics), calibrate
(onnxruntime frame loop), plan (which tensors get Q/DQ), weights (int8 weights, int32 bias, bias
correction), equalize (cross-layer equalization), qdq_writer / qdq_import (writing and reading QDQ
graphs), layer_error (per-tensor SQNR), stage (run_quantize), inputs (dataset frames), command (CLI).
"""

from segcompile.quantize.scheme import PRESETS, QParams, QuantScheme, get_scheme, scheme_from_dict
from segcompile.quantize.stage import QuantizeConfig, QuantizeResult, run_quantize

__all__ = [
    "PRESETS",
    "QParams",
    "QuantScheme",
    "QuantizeConfig",
    "QuantizeResult",
    "get_scheme",
    "run_quantize",
    "scheme_from_dict",
]
