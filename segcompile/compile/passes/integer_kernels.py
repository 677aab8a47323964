"""Relax building blocks for integer arithmetic: requantization, rounding shifts, integer resize.

Each function emits a few plain Relax operators (integer add, multiply, shift, clip, cast) into
a BlockBuilder, so the integer program stays visible to fusion and to every backend (LLVM for
the ARM cores, the C target for the DSP) instead of hiding in an opaque kernel. The arithmetic
is exactly that of :mod:`segcompile.compile.fixed_point`, whose numpy functions are the test
reference.
"""

from __future__ import annotations

import math

import numpy as np
from tvm import relax

from segcompile.compile.fixed_point import MULTIPLIER_BITS, FixedPointScale, quantize_multiplier

# Bilinear weights are fixed point with this many fractional bits per axis; the two weights of
# an output sample are rounded so that they sum to exactly 2**BITS. Error bound against the exact
# rational interpolation: each axis is off by at most 2**-(BITS+1) * |x1 - x0| <= 255 * 2**-(BITS+1),
# so both axes together by at most 255 * 2**-BITS ~= 0.008 input LSB (then one rounding at the end).
# Weights that are multiples of 2**-BITS (every power-of-2 factor up to 2**(BITS-1) with
# half_pixel/asymmetric coordinates) are exact. The first axis runs in int32 (|x| * 2**15 < 2**23),
# the second in int64 (< 2**38), and the final requantize uses a 24-bit multiplier so that the
# int64 product cannot overflow (relative scale error < 2**-24, far below one output LSB).
RESIZE_WEIGHT_BITS = 15
RESIZE_MULTIPLIER_BITS = 24

QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}
# Fractional bits of the affine maps (unfused BatchNormalization, Mul/Add by constants): affine_fixed_point.
AFFINE_SHIFT = 32


def const(values, dtype: str) -> relax.Constant:
    """A Relax constant of an explicit dtype (relax.const would turn int64 arrays into int32)."""
    dtype = str(dtype)
    return relax.const(np.asarray(values, dtype=dtype), dtype)


def broadcast_const(values, dtype: str) -> relax.Constant:
    """A constant used only under broadcasting; all-equal per-channel values become a scalar.

    Same result, and the artifact does not carry vectors of repeated shifts or multipliers.
    """
    array = np.asarray(values, dtype=str(dtype))
    if array.size > 1 and np.all(array == array.flat[0]):
        array = array.reshape(-1)[:1].reshape(())
    return const(array, dtype)


def shape_of(expr: relax.Expr) -> list[int]:
    """Static shape of a normalized tensor expression."""
    return [int(v) for v in expr.ty.shape.values]


def broadcast_shape(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Lay a per-channel vector along ``axis`` of an ``ndim`` tensor (scalars stay 0-d)."""
    values = np.asarray(values)
    if values.size == 1:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


def emit_rounding_right_shift(bb: relax.BlockBuilder, value: relax.Expr, shift: np.ndarray) -> relax.Expr:
    """Emit ``round(value / 2**shift)`` with ties to even on an int32/int64 tensor (see fixed_point).

    Works in the dtype of ``value``; the caller guarantees ``value + 2**(shift-1)`` fits in it.
    """
    dtype = str(value.ty.dtype)
    shift = np.asarray(shift, dtype=np.int64)
    if not np.any(shift):
        return value
    positive = shift > 0
    half_minus_one = np.where(positive, (np.int64(1) << np.maximum(shift - 1, 0)) - 1, 0)
    shift_c = broadcast_const(shift, dtype)
    truncated = bb.emit(relax.op.right_shift(value, shift_c))
    odd = bb.emit(relax.op.bitwise_and(truncated, broadcast_const(positive.astype(np.int64), dtype)))
    biased = bb.emit(relax.op.add(relax.op.add(value, broadcast_const(half_minus_one, dtype)), odd))
    return bb.emit(relax.op.right_shift(biased, shift_c))


def emit_clip_cast(
    bb: relax.BlockBuilder, value: relax.Expr, zero_point: int, lo: int, hi: int, out_dtype: str
) -> relax.Expr:
    """Add the output zero point, clip to ``[lo, hi]`` and cast to the int8/uint8 output."""
    dtype = str(value.ty.dtype)
    if zero_point:
        value = bb.emit(relax.op.add(value, const(zero_point, dtype)))
    value = bb.emit(relax.op.maximum(value, const(lo, dtype)))
    value = bb.emit(relax.op.minimum(value, const(hi, dtype)))
    return relax.op.astype(value, out_dtype)


def emit_requantize(
    bb: relax.BlockBuilder,
    accumulator: relax.Expr,
    real_scale: float | np.ndarray,
    zero_point: int,
    lo: int,
    hi: int,
    out_dtype: str,
    channel_axis: int = 1,
    multiplier_bits: int = MULTIPLIER_BITS,
    accumulator_bound: int | None = None,
) -> relax.Expr:
    """Emit ``clip(round(acc * real_scale) + zero_point, lo, hi)`` as integer Relax ops.

    ``accumulator`` is an int32/int64 tensor; ``real_scale`` a scalar or a per-channel vector laid
    along ``channel_axis``. Power-of-2 scales become a pure rounding shift; others an int64
    multiply by a ``multiplier_bits``-bit multiplier followed by the rounding shift (31 bits suit an
    int32 accumulator; wider accumulators need fewer so that the int64 product cannot overflow).
    ``accumulator_bound`` (a proven bound on ``|acc|``) lets a pure shift stay in int32 when the
    rounding term cannot overflow: cheaper on the DSP and on NEON than int64 lanes.
    """
    fixed: FixedPointScale = quantize_multiplier(real_scale, multiplier_bits)
    ndim = len(shape_of(accumulator))
    multiplier = broadcast_shape(fixed.multiplier, ndim, channel_axis)
    shift = broadcast_shape(fixed.shift, ndim, channel_axis)
    if fixed.pure_shift and accumulator_bound is not None and str(accumulator.ty.dtype) == "int32":
        largest_half = 1 << max(int(fixed.shift.max()) - 1, 0)
        if accumulator_bound + largest_half < 2**31:
            shifted = emit_rounding_right_shift(bb, accumulator, shift)
            return emit_clip_cast(bb, shifted, zero_point, lo, hi, out_dtype)
    wide = (
        accumulator
        if str(accumulator.ty.dtype) == "int64"
        else bb.emit(relax.op.astype(accumulator, "int64"))
    )
    if not fixed.pure_shift:
        wide = bb.emit(relax.op.multiply(wide, broadcast_const(multiplier, "int64")))
    shifted = emit_rounding_right_shift(bb, wide, shift)
    return emit_clip_cast(bb, shifted, zero_point, lo, hi, out_dtype)


def centered(bb: relax.BlockBuilder, value: relax.Expr, zero_point: int, dtype: str) -> relax.Expr:
    """``value - zero_point`` widened to ``dtype`` (int32/int64)."""
    wide = bb.emit(relax.op.astype(value, dtype))
    if zero_point:
        wide = bb.emit(relax.op.subtract(wide, const(zero_point, dtype)))
    return wide


def round_half_even(value: float) -> int:
    """Python's round() is already ties-to-even; named so the intent is visible at call sites."""
    return int(round(value))


def activation_bounds(
    interval: tuple[float, float], scale: float, zero_point: int, out_dtype: str
) -> tuple[int, int]:
    """Integer clip bounds for a float activation interval (ReLU, ReLU6, Clip) folded into requantize.

    ``Q(clip(y, a, b)) == clip(Q(y), Q(a), Q(b))`` because rounding is monotonic, so the float
    activation becomes a tighter integer clip at no cost.
    """
    qmin, qmax = QRANGE[out_dtype]
    low, high = interval
    lo = qmin if math.isinf(low) else max(qmin, min(qmax, round_half_even(low / scale) + zero_point))
    hi = qmax if math.isinf(high) else min(qmax, max(qmin, round_half_even(high / scale) + zero_point))
    return lo, hi


def resize_source_coordinates(out_size: int, in_size: int, mode: str) -> np.ndarray:
    """ONNX Resize source coordinate of every output index (float64), for one spatial axis."""
    out_index = np.arange(out_size, dtype=np.float64)
    scale = out_size / in_size
    if mode == "half_pixel":
        return (out_index + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (out_index + 0.5) / scale - 0.5 if out_size > 1 else np.zeros(out_size)
    if mode == "align_corners":
        return out_index * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros(out_size)
    if mode == "asymmetric":
        return out_index / scale
    if mode == "tf_half_pixel_for_nn":  # TensorFlow's nearest-neighbour convention (tf2onnx)
        return (out_index + 0.5) / scale
    raise ValueError(f"coordinate_transformation_mode {mode!r}")


def linear_taps(out_size: int, in_size: int, mode: str, bits: int = RESIZE_WEIGHT_BITS):
    """Two source indices and fixed-point weights (summing to ``2**bits``) per output index."""
    source = np.clip(resize_source_coordinates(out_size, in_size, mode), 0, in_size - 1)
    first = np.floor(source).astype(np.int64)
    second = np.minimum(first + 1, in_size - 1)
    weight_second = np.round((source - first) * (1 << bits)).astype(np.int64)
    weight_first = (1 << bits) - weight_second
    return first, second, weight_first, weight_second


def nearest_indices(out_size: int, in_size: int, mode: str, rounding: str) -> np.ndarray:
    """ONNX nearest-neighbour source index per output index."""
    source = resize_source_coordinates(out_size, in_size, mode)
    if rounding in ("round_prefer_floor", "round"):
        index = np.ceil(source - 0.5)
    elif rounding == "round_prefer_ceil":
        index = np.floor(source + 0.5)
    elif rounding == "floor":
        index = np.floor(source)
    elif rounding == "ceil":
        index = np.ceil(source)
    else:
        raise ValueError(f"nearest rounding {rounding!r}")
    return np.clip(index, 0, in_size - 1).astype(np.int64)


def emit_linear_resize_axis(
    bb: relax.BlockBuilder, value: relax.Expr, axis: int, out_size: int, mode: str
) -> relax.Expr:
    """Weighted sum of two gathered neighbours along ``axis`` (result scaled by 2**RESIZE_WEIGHT_BITS).

    Works in the dtype of ``value`` (int32 or int64); the caller widens before a second axis.
    """
    dtype = str(value.ty.dtype)
    ndim = len(shape_of(value))
    in_size = shape_of(value)[axis]
    first, second, w_first, w_second = linear_taps(out_size, in_size, mode)
    shape = [1] * ndim
    shape[axis] = out_size
    near = bb.emit(relax.op.take(value, const(first, "int64"), axis=axis, mode="clip"))
    far = bb.emit(relax.op.take(value, const(second, "int64"), axis=axis, mode="clip"))
    near = bb.emit(relax.op.multiply(near, const(w_first.reshape(shape), dtype)))
    far = bb.emit(relax.op.multiply(far, const(w_second.reshape(shape), dtype)))
    return bb.emit(relax.op.add(near, far))


def affine_fixed_point(
    real_scale: np.ndarray, real_offset: np.ndarray, input_magnitude: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel ``y = x * scale + offset`` (in output LSBs) as ``(x * M + B) >> S`` in int64.

    One rounding at the end, like a requantize whose bias joins before the shift: ``M = round(scale *
    2**S)`` (signed, so a negative BN gamma needs no special case), ``B = round(offset * 2**S)``. With
    ``S = AFFINE_SHIFT`` the represented scale is off by at most ``2**-(S+1)`` per input LSB, i.e.
    ``input_magnitude * 2**-33`` output LSB: far below one rounding step. Offsets beyond
    ``|scale| * input_magnitude + 512`` saturate the output whatever ``x`` is, so they are clamped there
    (same result, and int64 cannot overflow); ``S`` shrinks only for absurd scales (> 2**20).
    ``|x| <= input_magnitude`` is the caller's guarantee. Returns ``(M, B, S)`` (int64 arrays, int).
    """
    scale = np.asarray(real_scale, np.float64)
    offset = np.asarray(real_offset, np.float64)
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(offset))):
        raise ValueError("affine scale or offset is not finite")
    reach = np.abs(scale) * input_magnitude + 512.0
    offset = np.clip(offset, -reach, reach)
    largest = float((np.abs(scale) * input_magnitude + reach).max())
    shift = min(AFFINE_SHIFT, 61 - math.ceil(math.log2(largest + 1.0)))
    if shift < 8:
        raise ValueError(f"affine scale {float(np.abs(scale).max()):g} is too large for int64 fixed point")
    multiplier = np.round(scale * 2.0**shift).astype(np.int64)
    bias = np.round(offset * 2.0**shift).astype(np.int64)
    return multiplier, bias, shift
