"""Weight and bias quantization: symmetric int8 weights (optional MSE search), int32 bias, bias correction."""

from __future__ import annotations

import numpy as np

from segcompile.quantize.scheme import (
    BIAS_QMAX,
    BIAS_QMIN,
    WEIGHT_QMAX,
    WEIGHT_QMIN,
    QParams,
    QuantScheme,
    dequantize_array,
    quantize_array,
    snap_pow2,
)

WEIGHT_SEARCHES = ("minmax", "mse")
# Clipping ratios tried by the MSE search (fraction of each channel's max |w|).
_MSE_RATIOS = np.linspace(0.5, 1.0, 51)


def _channel_view(weight: np.ndarray, axis: int) -> np.ndarray:
    """(C, K) view of ``weight`` with channel axis first."""
    return np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1).astype(np.float64)


def _grid_error(flat: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Squared error of quantizing each row of ``flat`` (C, K) with each candidate scale (N, C) -> (N, C)."""
    s = scales[:, :, None]
    q = np.clip(np.rint(flat[None] / s), WEIGHT_QMIN, WEIGHT_QMAX) * s
    return ((q - flat[None]) ** 2).sum(axis=2)


def weight_qparams(weight: np.ndarray, scheme: QuantScheme, axis: int, search: str = "minmax") -> QParams:
    """Symmetric int8 scale(s) for a conv weight, per channel along ``axis`` or per tensor.

    ``search="mse"`` picks each scale among clipped candidates (or neighbouring powers of two) by the
    squared error of the quantized weights; ``minmax`` covers max |w| exactly.
    """
    if search not in WEIGHT_SEARCHES:
        raise ValueError(f"weight search {search!r} is not one of {WEIGHT_SEARCHES}")
    per_channel = scheme.per_channel
    flat = _channel_view(weight, axis) if per_channel else weight.reshape(1, -1).astype(np.float64)
    amax = np.abs(flat).max(axis=1)
    base = np.where(amax > 0, amax / WEIGHT_QMAX, 1.0)
    if scheme.power_of_2:
        base = snap_pow2(base, "ceil").astype(np.float64)
        if search == "mse":
            # Powers of two below the covering one clip the largest weights but refine the rest.
            candidates = np.stack([base / (2.0**k) for k in range(4)])
            best = np.argmin(_grid_error(flat, candidates), axis=0)
            base = candidates[best, np.arange(flat.shape[0])]
    elif search == "mse":
        candidates = _MSE_RATIOS[:, None] * base[None]
        best = np.argmin(_grid_error(flat, candidates), axis=0)
        base = candidates[best, np.arange(flat.shape[0])]
    scale = base.astype(np.float32)
    if per_channel:
        return QParams(scale=scale, zero_point=np.zeros(scale.shape, np.int8), dtype="int8", axis=axis)
    return QParams(scale=np.asarray(scale[0], np.float32), zero_point=np.asarray(0, np.int8), dtype="int8")


def quantize_weight(weight: np.ndarray, qp: QParams) -> np.ndarray:
    """int8 weight on the restricted symmetric grid [-127, 127]."""
    return quantize_array(weight, qp, WEIGHT_QMIN, WEIGHT_QMAX)


def bias_qparams(input_scale: float, weight_qp: QParams, channels: int) -> QParams:
    """int32 bias parameters at scale s_in * s_w (per output channel), zero point 0."""
    scale = (np.float32(input_scale) * np.broadcast_to(weight_qp.scale, (channels,))).astype(np.float32)
    return QParams(scale=scale, zero_point=np.zeros(channels, np.int32), dtype="int32", axis=0)


def quantize_bias(bias: np.ndarray, qp: QParams) -> np.ndarray:
    """int32 bias (saturating; a saturated bias means an absurd scale and is reported by the caller)."""
    return quantize_array(bias, qp, BIAS_QMIN, BIAS_QMAX)


def weight_error_mean_shift(
    weight: np.ndarray, dequantized: np.ndarray, input_channel_mean: np.ndarray, group: int, transposed: bool
) -> np.ndarray:
    """Expected per-output-channel shift E[(W_q - W) x] of a conv, from the mean of each input channel.

    Bias correction (Nagel et al., "Data-Free Quantization", sec. 4.2) subtracts this from the bias. The
    spatial mean of a conv output is sum over kernel taps of the weight times the input channel mean
    (exact away from the zero-padded border).
    """
    delta = dequantized.astype(np.float64) - weight.astype(np.float64)
    if transposed:
        # ConvTranspose weight is (C_in, C_out/group, kh, kw); each input channel feeds C_out/group outputs.
        cin, cout_g = delta.shape[:2]
        cin_g = cin // group
        per_tap = delta.reshape(cin, cout_g, -1).sum(axis=2)  # (C_in, C_out/g)
        out = np.zeros(cout_g * group)
        for g in range(group):
            block = per_tap[g * cin_g : (g + 1) * cin_g]  # (cin_g, cout_g)
            out[g * cout_g : (g + 1) * cout_g] = input_channel_mean[g * cin_g : (g + 1) * cin_g] @ block
        return out
    cout, cin_g = delta.shape[:2]
    cout_g = cout // group
    per_tap = delta.reshape(cout, cin_g, -1).sum(axis=2)  # (C_out, C_in/g)
    means = input_channel_mean.reshape(group, cin_g)
    group_of_out = np.arange(cout) // cout_g
    return (per_tap * means[group_of_out]).sum(axis=1)


def tap_mean_shift(
    weight: np.ndarray, dequantized: np.ndarray, tap_means: np.ndarray, group: int
) -> np.ndarray:
    """Expected per-output-channel shift of a Conv from its input's per-tap means (C_in, kh, kw).

    Conv is linear in its weights, so E[conv(x, W_q) - conv(x, W)] = sum over (c, i, j) of
    (W_q - W)[o, c, i, j] * E[x seen by tap (i, j) of channel c], padding zeros included.
    """
    delta = dequantized.astype(np.float64) - weight.astype(np.float64)  # (C_out, C_in/g, kh, kw)
    cout, cin_g = delta.shape[:2]
    cout_g = cout // group
    groups = np.arange(cout) // cout_g
    means = tap_means.reshape(group, cin_g, *tap_means.shape[1:])[groups]  # (C_out, C_in/g, kh, kw)
    return (delta * means).sum(axis=(1, 2, 3))


def dequantize_weight(q: np.ndarray, qp: QParams) -> np.ndarray:
    """Float weights as the QDQ graph sees them."""
    return dequantize_array(q, qp)
