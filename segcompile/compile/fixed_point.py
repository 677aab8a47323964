"""Fixed-point requantization: the integer arithmetic a board uses instead of float scales.

A quantized layer computes an int32 accumulator ``acc`` at scale ``s_acc`` and must store it as int8
at scale ``s_out``. The real factor ``M = s_acc / s_out`` is written as ``m * 2**-shift`` with an
integer multiplier ``m`` in ``[2**30, 2**31)`` (31 significant bits, so the relative error of the
represented scale is below ``2**-31``, about 4.7e-10), and the requantized value is
``round(acc * m / 2**shift)`` computed with one int64 multiply and one rounding right shift.
When ``M`` is an exact power of two (the TDA4VM scheme: power-of-2 scales everywhere) the multiply
disappears and only the shift remains.

Rounding: round-half-to-even. onnxruntime rounds QuantizeLinear (and its fused QLinear kernels)
with ``nearbyint``, i.e. ties to even; with power-of-2 scales ties are frequent (every odd
multiple of ``2**(shift-1)``), so round-half-up would disagree with onnxruntime by one LSB on a
noticeable fraction of elements while ties-to-even agrees exactly.

The numpy functions here are the reference the compiled Relax code is tested against; they use
exactly the same integer steps (no float) so the two must agree bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from segcompile.errors import SegcompileError

# Multipliers carry 31 significant bits: m * acc fits in int64 for any int32 accumulator.
MULTIPLIER_BITS = 31
# Largest right shift we emit; beyond it every int32 accumulator rounds to zero anyway.
MAX_SHIFT = 62


@dataclass(frozen=True)
class FixedPointScale:
    """A real scale (scalar or per channel) as ``multiplier * 2**-shift``.

    ``multiplier`` and ``shift`` are int64 arrays of the same shape as the real scale.
    ``pure_shift`` is true when every multiplier is 1, i.e. the scale is an exact power of two
    not above one and requantization needs no multiply.
    """

    multiplier: np.ndarray
    shift: np.ndarray
    pure_shift: bool

    def real(self) -> np.ndarray:
        """The real scale this fixed-point pair represents (float64), for checks."""
        return self.multiplier.astype(np.float64) * np.exp2(-self.shift.astype(np.float64))


def _is_power_of_two(value: float) -> bool:
    mantissa, _ = math.frexp(value)
    return mantissa == 0.5


def quantize_multiplier(real_scale: float | np.ndarray, bits: int = MULTIPLIER_BITS) -> FixedPointScale:
    """Represent ``real_scale`` (>= 0, scalar or array) as ``multiplier * 2**-shift``.

    Power-of-2 scales at or below one become a pure shift (multiplier 1). Other scales get a
    ``bits``-bit multiplier in ``[2**(bits-1), 2**bits)``.
    """
    scales = np.asarray(real_scale, dtype=np.float64)
    if scales.size == 0 or not np.all(np.isfinite(scales)) or np.any(scales < 0):
        raise SegcompileError(f"requantization scale must be finite and >= 0, got {scales.ravel()[:4]}")
    pure = bool(all(_is_power_of_two(float(s)) and s <= 1.0 for s in scales.ravel()))
    multipliers = np.empty(scales.shape, dtype=np.int64)
    shifts = np.empty(scales.shape, dtype=np.int64)
    for index, value in np.ndenumerate(scales):
        if value == 0:  # an all-zero channel (weight scale 0): its output is the zero point
            multipliers[index], shifts[index] = 0, 0
            continue
        mantissa, exponent = math.frexp(float(value))  # value = mantissa * 2**exponent, mantissa in [0.5, 1)
        if pure:
            # Beyond MAX_SHIFT every int32 accumulator rounds to zero, so clamping changes nothing.
            multipliers[index], shifts[index] = 1, min(1 - exponent, MAX_SHIFT)
            continue
        multiplier = round(mantissa * (1 << bits))
        if multiplier == 1 << bits:  # mantissa rounded up to 1.0
            multiplier //= 2
            exponent += 1
        shift = bits - exponent
        if shift < 0:
            raise SegcompileError(f"requantization scale {value:g} is too large for a fixed-point multiplier")
        if shift > MAX_SHIFT:
            # The scale is so small that every int32 accumulator rounds to zero: say so exactly.
            multiplier, shift = 0, 0
        multipliers[index], shifts[index] = multiplier, shift
    return FixedPointScale(multiplier=multipliers, shift=shifts, pure_shift=pure)


def common_shift_multipliers(real_scales: list[float], bits: int = MULTIPLIER_BITS) -> tuple[list[int], int]:
    """Multipliers for several scalar scales sharing one right shift (for integer add / sum).

    The largest scale gets a ``bits``-bit multiplier; the others are expressed at the same shift,
    so ``sum_i x_i * m_i`` can be rounded once instead of once per term.
    """
    if not real_scales or any(not (s > 0 and math.isfinite(s)) for s in real_scales):
        raise SegcompileError(f"requantization scales must be finite and > 0, got {real_scales}")
    _, exponent = math.frexp(max(real_scales))
    shift = min(bits - exponent, MAX_SHIFT)
    if shift < 0:
        raise SegcompileError(f"requantization scale {max(real_scales):g} is too large for fixed point")
    return [round(s * 2.0**shift) for s in real_scales], shift


def rounding_right_shift(values: np.ndarray, shift: np.ndarray | int) -> np.ndarray:
    """``round(values / 2**shift)`` with ties to even, in int64 integer arithmetic only.

    Written as ``(x + 2**(s-1) - 1 + ((x >> s) & 1)) >> s``: the floor shift adds half minus one,
    plus one more exactly when the truncated quotient is odd, which turns ties towards even.
    A shift of zero returns the values unchanged.
    """
    x = np.asarray(values, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    positive = s > 0
    half_minus_one = np.where(positive, (np.int64(1) << np.maximum(s - 1, 0)) - 1, 0).astype(np.int64)
    odd_mask = positive.astype(np.int64)
    return (x + half_minus_one + ((x >> s) & odd_mask)) >> s


def integer_reference(
    accumulator: np.ndarray,
    real_scale: float | np.ndarray,
    zero_point: int = 0,
    qmin: int = -128,
    qmax: int = 127,
    channel_axis: int = 1,
    out_dtype: str = "int8",
) -> np.ndarray:
    """Numpy reference of integer requantization: ``clip(round(acc * M) + zero_point, qmin, qmax)``.

    ``real_scale`` is a scalar or a per-channel vector laid along ``channel_axis`` of
    ``accumulator``; the rounding is the fixed-point multiply and ties-to-even shift of
    :func:`quantize_multiplier` / :func:`rounding_right_shift`, exactly as the compiled module does.
    """
    acc = np.asarray(accumulator).astype(np.int64)
    fixed = quantize_multiplier(real_scale)
    multiplier, shift = fixed.multiplier, fixed.shift
    if multiplier.ndim == 1 and multiplier.size > 1:
        shape = [1] * acc.ndim
        shape[channel_axis] = multiplier.size
        multiplier, shift = multiplier.reshape(shape), shift.reshape(shape)
    scaled = rounding_right_shift(acc if fixed.pure_shift else acc * multiplier, shift)
    return np.clip(scaled + zero_point, qmin, qmax).astype(out_dtype)
