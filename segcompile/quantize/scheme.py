"""Quantization schemes: what integer formats a target's kernels accept, and the arithmetic of choosing them.

A :class:`QuantScheme` is the ``quantization:`` section of a target profile. The functions here turn a real
range (or a weight tensor) into scale/zero-point under a scheme; the calibration, the QDQ writer and the QAT
fake-quant all call them, so every path rounds the same way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from segcompile.errors import SegcompileError

WEIGHT_GRANULARITIES = ("per-channel", "per-tensor")
ACTIVATION_DTYPES = ("int8", "uint8")

# Symmetric weights use the restricted range [-127, 127] so that negating a weight never overflows
# and the integer kernels can treat the weight grid as sign-symmetric.
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
BIAS_QMIN, BIAS_QMAX = -(2**31), 2**31 - 1


@dataclass(frozen=True)
class QuantScheme:
    """Integer formats one target's kernels accept."""

    name: str = "custom"
    weight_granularity: str = "per-channel"  # per-channel (axis 0 of conv weights) | per-tensor
    weight_bits: int = 8
    power_of_2: bool = False  # every scale (weights, activations, hence bias) is 2**k: requantize by shift
    activation_symmetric: bool = True  # zero point 0; False allows an asymmetric zero point
    activation_dtype: str = "int8"  # int8 | uint8
    activation_bits: int = 8
    bias_bits: int = 32
    # Non-negative activations (ReLU/ReLU6 outputs and what only moves them) as uint8 with zero point 0,
    # as TIDL does: twice the resolution of symmetric int8 there. Kernels must accept uint8 inputs.
    unsigned_activations: bool = False

    @property
    def activation_qrange(self) -> tuple[int, int]:
        return (-128, 127) if self.activation_dtype == "int8" else (0, 255)

    @property
    def per_channel(self) -> bool:
        return self.weight_granularity == "per-channel"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, QuantScheme] = {
    # TDA4VM's accelerator takes only per-tensor power-of-2 scales with symmetric int8.
    "tda4vm": QuantScheme(name="tda4vm", weight_granularity="per-tensor", power_of_2=True),
    "per-channel": QuantScheme(name="per-channel", weight_granularity="per-channel"),
    "per-channel-asym": QuantScheme(
        name="per-channel-asym",
        weight_granularity="per-channel",
        activation_symmetric=False,
        activation_dtype="uint8",
    ),
}


def get_scheme(name: str) -> QuantScheme:
    """Return the named preset scheme."""
    try:
        return PRESETS[name]
    except KeyError:
        raise SegcompileError(
            f"unknown quantization scheme {name!r}; choose one of {', '.join(sorted(PRESETS))}"
        ) from None


def scheme_from_dict(d: dict[str, Any], source: str = "quantization") -> QuantScheme:
    """Build and validate a scheme from a target profile's ``quantization:`` section.

    ``preset: <name>`` starts from a preset; every other key overrides one :class:`QuantScheme` field.
    Errors name ``source`` and the offending field.
    """
    if not isinstance(d, dict):
        raise SegcompileError(f"{source}: expected a mapping, got {type(d).__name__}")
    raw = dict(d)
    base = QuantScheme()
    if "preset" in raw:
        preset = raw.pop("preset")
        if preset not in PRESETS:
            raise SegcompileError(
                f"{source}.preset: unknown scheme {preset!r}; choose one of {', '.join(sorted(PRESETS))}"
            )
        base = PRESETS[preset]
    known = {f.name: f for f in fields(QuantScheme)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise SegcompileError(
            f"{source}: unknown field(s) {', '.join(unknown)}; allowed: preset, {', '.join(sorted(known))}"
        )
    for key, value in raw.items():
        expected = {
            "name": str,
            "weight_granularity": str,
            "activation_dtype": str,
            "power_of_2": bool,
            "activation_symmetric": bool,
            "unsigned_activations": bool,
        }.get(key, int)
        if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise SegcompileError(f"{source}.{key}: expected an integer, got {value!r}")
        if expected is not int and not isinstance(value, expected):
            raise SegcompileError(f"{source}.{key}: expected {expected.__name__}, got {value!r}")
    if "name" not in raw and raw:
        raw["name"] = f"{base.name}+custom" if base.name != "custom" else "custom"
    scheme = replace(base, **raw)
    validate_scheme(scheme, source)
    return scheme


def validate_scheme(scheme: QuantScheme, source: str = "quantization") -> None:
    """Reject schemes the QDQ writer and the integer kernels cannot express."""
    if scheme.weight_granularity not in WEIGHT_GRANULARITIES:
        raise SegcompileError(
            f"{source}.weight_granularity: {scheme.weight_granularity!r} is not one of "
            f"{', '.join(WEIGHT_GRANULARITIES)}"
        )
    if scheme.activation_dtype not in ACTIVATION_DTYPES:
        raise SegcompileError(
            f"{source}.activation_dtype: {scheme.activation_dtype!r} is not one of "
            f"{', '.join(ACTIVATION_DTYPES)}"
        )
    for key in ("weight_bits", "activation_bits"):
        if getattr(scheme, key) != 8:
            raise SegcompileError(f"{source}.{key}: only 8 is supported, got {getattr(scheme, key)}")
    if scheme.bias_bits != 32:
        raise SegcompileError(f"{source}.bias_bits: only 32 is supported, got {scheme.bias_bits}")
    if scheme.activation_dtype == "uint8" and scheme.activation_symmetric:
        raise SegcompileError(
            f"{source}.activation_dtype: uint8 activations need activation_symmetric: false "
            "(a symmetric uint8 grid would put the zero point at 128)"
        )
    if scheme.unsigned_activations and not scheme.activation_symmetric:
        raise SegcompileError(
            f"{source}.unsigned_activations: only applies to symmetric activations "
            "(asymmetric ones already place their zero point at the range's minimum)"
        )


def unsigned_variant(scheme: QuantScheme) -> QuantScheme:
    """The scheme a non-negative activation uses when ``scheme.unsigned_activations`` is set."""
    return replace(scheme, activation_dtype="uint8", activation_symmetric=False, unsigned_activations=False)


# ---------------------------------------------------------------------------------------------------------
# Scale arithmetic


def snap_pow2(scale: np.ndarray | float, mode: str = "ceil") -> np.ndarray:
    """Round scales to powers of two (``ceil`` keeps the whole range; ``nearest`` rounds in log2).

    A scale that is already a power of two (to float32 precision) is returned unchanged.
    """
    s = np.asarray(scale, dtype=np.float64)
    safe = np.where(s > 0, s, 1.0)
    log = np.log2(safe)
    exact = np.abs(log - np.round(log)) < 1e-6
    if mode == "ceil":
        exp = np.where(exact, np.round(log), np.ceil(log))
    elif mode == "floor":
        exp = np.where(exact, np.round(log), np.floor(log))
    else:
        exp = np.round(log)
    return np.where(s > 0, np.exp2(exp), 1.0).astype(np.float32)


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of one tensor (arrays of length C for per-channel, scalars otherwise)."""

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str  # int8 | uint8 | int32
    axis: int | None = None

    @property
    def qrange(self) -> tuple[int, int]:
        return {"int8": (-128, 127), "uint8": (0, 255), "int32": (BIAS_QMIN, BIAS_QMAX)}[self.dtype]

    def real_range(self) -> tuple[float, float]:
        lo, hi = self.qrange
        scale = float(np.max(self.scale))
        zp = float(np.max(self.zero_point))
        return (lo - zp) * scale, (hi - zp) * scale


def activation_qparams(lo: float, hi: float, scheme: QuantScheme, pow2_mode: str = "ceil") -> QParams:
    """Scale/zero point covering the real range [lo, hi] of an activation under ``scheme``."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)  # the grid must hold an exact 0 (padding, ReLU)
    qmin, qmax = scheme.activation_qrange
    if scheme.activation_symmetric:
        amax = max(-lo, hi)
        # Positive side has 127 steps: scale so that +amax is exactly representable.
        scale = amax / 127.0 if amax > 0 else 1.0
        if scheme.power_of_2:
            scale = float(snap_pow2(scale, pow2_mode))
        zero_point = 0
    else:
        span = hi - lo
        scale = span / float(qmax - qmin) if span > 0 else 1.0
        if scheme.power_of_2:
            scale = float(snap_pow2(scale, pow2_mode))
        zero_point = int(np.clip(np.rint(qmin - lo / scale), qmin, qmax))
    np_dtype = np.int8 if scheme.activation_dtype == "int8" else np.uint8
    return QParams(
        scale=np.asarray(scale, dtype=np.float32),
        zero_point=np.asarray(zero_point, dtype=np_dtype),
        dtype=scheme.activation_dtype,
    )


def conform_qparams(qp: QParams, scheme: QuantScheme) -> tuple[QParams, list[str]]:
    """Bring imported (e.g. QAT) activation parameters into ``scheme``; returns what had to change."""
    changes: list[str] = []
    scale = float(np.max(qp.scale))
    zp = int(np.max(qp.zero_point))
    same_dtype = qp.dtype == scheme.activation_dtype
    fits = same_dtype and (not scheme.activation_symmetric or zp == 0)
    if fits:
        new_scale = scale
        if scheme.power_of_2:
            new_scale = float(snap_pow2(scale, "ceil"))
            if new_scale != np.float32(scale):
                changes.append("snapped-pow2")
        out = QParams(np.asarray(new_scale, np.float32), np.asarray(zp, qp.zero_point.dtype), qp.dtype)
        return out, changes
    lo, hi = qp.real_range()
    changes.append(
        f"converted-{'symmetric' if scheme.activation_symmetric else 'asymmetric'}-{scheme.activation_dtype}"
    )
    out = activation_qparams(lo, hi, scheme)
    if scheme.power_of_2:
        changes.append("snapped-pow2")
    return out, changes


def quantize_array(
    values: np.ndarray, qp: QParams, qmin: int | None = None, qmax: int | None = None
) -> np.ndarray:
    """Round-half-to-even quantization as ONNX QuantizeLinear does (per-channel scales along ``axis``)."""
    lo, hi = qp.qrange
    lo = lo if qmin is None else qmin
    hi = hi if qmax is None else qmax
    scale = np.asarray(qp.scale, dtype=np.float32)
    zp = np.asarray(qp.zero_point)
    if qp.axis is not None and scale.ndim == 1:
        shape = [1] * values.ndim
        shape[qp.axis] = -1
        scale = scale.reshape(shape)
        zp = zp.reshape(shape)
    q = np.rint(values.astype(np.float32) / scale) + zp.astype(np.float64)
    np_dtype = {"int8": np.int8, "uint8": np.uint8, "int32": np.int32}[qp.dtype]
    return np.clip(q, lo, hi).astype(np_dtype)


def dequantize_array(q: np.ndarray, qp: QParams) -> np.ndarray:
    """Inverse of :func:`quantize_array` (DequantizeLinear)."""
    scale = np.asarray(qp.scale, dtype=np.float32)
    zp = np.asarray(qp.zero_point)
    if qp.axis is not None and scale.ndim == 1:
        shape = [1] * q.ndim
        shape[qp.axis] = -1
        scale = scale.reshape(shape)
        zp = zp.reshape(shape)
    return ((q.astype(np.int64) - zp.astype(np.int64)).astype(np.float32) * scale).astype(np.float32)


def is_pow2(value: float) -> bool:
    """True when ``value`` is an exact power of two."""
    if value <= 0:
        return False
    mantissa, _ = math.frexp(float(value))
    return mantissa == 0.5
