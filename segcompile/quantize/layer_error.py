"""Layer-wise error: SQNR (dB) of every quantized activation, float graph vs int8 QDQ graph on a few frames.

``sqnr_db`` compares the float tensor with the int8 graph's dequantized tensor, so it includes error
accumulated upstream (what the output actually sees); ``sqnr_local_db`` quantizes the float tensor alone,
isolating the layer's own range choice. A layer whose local SQNR is low has a bad range; one whose
accumulated SQNR drops sharply below its inputs' is sensitive.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from segcompile.quantize.calibrate import make_session, with_outputs
from segcompile.quantize.qdq_writer import qdq_tensor_name
from segcompile.quantize.scheme import QParams, dequantize_array, quantize_array


def sqnr_db(signal_power: float, noise_power: float) -> float | None:
    """10 log10(signal / noise); None for an all-zero signal, capped at 200 dB for an exact match."""
    if signal_power <= 0:
        return None
    if noise_power <= 0:
        return 200.0
    return round(min(10.0 * math.log10(signal_power / noise_power), 200.0), 3)


def layer_sqnr(
    float_model: onnx.ModelProto,
    qdq_model: onnx.ModelProto,
    tensors: list[str],
    params: dict[str, QParams],
    frames: list[np.ndarray],
) -> dict[str, dict[str, float | None]]:
    """Per-tensor accumulated and local SQNR over ``frames``, streamed frame by frame."""
    qdq_names = [qdq_tensor_name(qdq_model, t) for t in tensors]
    float_session = make_session(with_outputs(float_model, tensors))
    qdq_session = make_session(with_outputs(qdq_model, qdq_names))
    float_input = float_session.get_inputs()[0].name
    qdq_input = qdq_session.get_inputs()[0].name
    signal = dict.fromkeys(tensors, 0.0)
    noise = dict.fromkeys(tensors, 0.0)
    local = dict.fromkeys(tensors, 0.0)
    for frame in frames:
        ref = float_session.run(tensors, {float_input: frame})
        got = qdq_session.run(qdq_names, {qdq_input: frame})
        for name, x, y in zip(tensors, ref, got, strict=False):
            x64 = x.astype(np.float64)
            signal[name] += float((x64**2).sum())
            noise[name] += float(((x64 - y.astype(np.float64)) ** 2).sum())
            qp = params[name]
            fq = dequantize_array(quantize_array(x, qp), qp).astype(np.float64)
            local[name] += float(((x64 - fq) ** 2).sum())
    return {
        t: {"sqnr_db": sqnr_db(signal[t], noise[t]), "sqnr_local_db": sqnr_db(signal[t], local[t])}
        for t in tensors
    }
