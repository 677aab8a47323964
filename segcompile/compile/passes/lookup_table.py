"""Elementwise float functions of one int8 tensor, tabulated: the integer kernel of Sigmoid, HardSwish & co.

A one-input elementwise function between a dequantize and a quantize (``Q(f(DQ(x)))``) can take only 256
input values, so the whole float computation is a 256-entry int8 table indexed by the int8 input, computed
once at compile time. Why a table rather than a fixed-point approximation of each function:

- exact: every entry is what onnxruntime computes for that input value (dequantize, ``f`` in float32,
  quantize rounding half to even), so the integer module agrees with the QDQ graph up to float32
  differences in ``f`` itself, with no per-function error analysis;
- one gather per element, whatever ``f`` is (HardSwish, Sigmoid, Tanh, LeakyRelu, SiLU, chains of them);
- a plain ``take`` on an int8 constant, which every backend has, the DSP's C target included.

``f`` is evaluated with numpy in float32 by re-reading the float Relax ops the ONNX importer emitted
(:data:`ELEMENTWISE_OPS`), so the table follows the float graph operation by operation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from segcompile.compile.passes.integer_kernels import QRANGE

F32 = np.float32


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return F32(1.0) / (F32(1.0) + np.exp(-x))


def _leaky_relu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, x * F32(alpha)).astype(F32)


# Relax op name -> numpy float32 implementation of the same arithmetic (arguments already evaluated).
# Ops with attributes take them as keyword arguments (see ``op_attributes``).
ELEMENTWISE_OPS: dict[str, Callable[..., np.ndarray]] = {
    "relax.add": np.add,
    "relax.subtract": np.subtract,
    "relax.multiply": np.multiply,
    "relax.divide": np.divide,
    "relax.maximum": np.maximum,
    "relax.minimum": np.minimum,
    "relax.negative": np.negative,
    "relax.abs": np.abs,
    "relax.exp": np.exp,
    "relax.tanh": np.tanh,
    "relax.sigmoid": _sigmoid,
    "relax.nn.relu": lambda x: np.maximum(x, F32(0.0)),
    "relax.nn.silu": lambda x: x * _sigmoid(x),
    "relax.nn.leakyrelu": _leaky_relu,
    "relax.clip": lambda x, low, high: np.clip(x, F32(low), F32(high)),
}


def op_attributes(op_name: str, attrs) -> dict:
    """Keyword arguments of :data:`ELEMENTWISE_OPS` taken from a Relax call's attributes."""
    if op_name == "relax.nn.leakyrelu":
        return {"alpha": float(attrs.alpha)}
    return {}


def dequantized_levels(scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """Every value an int8/uint8 tensor can hold, dequantized as DequantizeLinear does (float32)."""
    qmin, qmax = QRANGE[dtype]
    levels = np.arange(qmin, qmax + 1, dtype=np.int32)
    return (levels - np.int32(zero_point)).astype(F32) * F32(scale)


def quantize_values(
    values: np.ndarray, scale: float, zero_point: int, dtype: str, lo: int, hi: int
) -> np.ndarray:
    """QuantizeLinear of float32 ``values``: divide, round half to even, add the zero point, clip."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        scaled = np.rint(values.astype(F32) / F32(scale)).astype(np.float64) + zero_point
    return np.clip(scaled, lo, hi).astype(dtype)


def lookup_table(
    function: Callable[[np.ndarray], np.ndarray],
    in_scale: float,
    in_zero_point: int,
    in_dtype: str,
    out_scale: float,
    out_zero_point: int,
    out_dtype: str,
) -> np.ndarray:
    """``table[q - qmin] = Q_out(function(DQ_in(q)))`` for every input level ``q``, as ``out_dtype``.

    Raises ValueError when ``function`` gives NaN for some input (no integer result exists for it).
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        values = np.asarray(function(dequantized_levels(in_scale, in_zero_point, in_dtype)), dtype=F32)
    if values.shape != (QRANGE[in_dtype][1] - QRANGE[in_dtype][0] + 1,):
        raise ValueError(f"the function is not elementwise (table shape {values.shape})")
    if np.isnan(values).any():
        raise ValueError("the function is NaN for some input values")
    lo, hi = QRANGE[out_dtype]
    return quantize_values(values, out_scale, out_zero_point, out_dtype, lo, hi)
