"""The Relax pass that turns simulated quantization into integer arithmetic.

After import, every quantized operator looks like ``quantize(f(dequantize(a), dequantize(W)...))``:
float compute between a dequantize and a quantize. This pass rewrites each such ``quantize`` call
(the root of the pattern) into the integer program a board runs: int8 x int8 -> int32
convolution/transposed convolution/matmul plus fixed-point requantization, integer
add/mul/concat/resize/pool/pad, a per-channel fixed-point affine map for an unfused BatchNorm, clip
on int8, layout operators applied directly to int8 tensors, and a 256-entry lookup table for any
other elementwise function of one int8 tensor (Sigmoid, HardSwish, ...; see lookup_table.py). It
must run before FoldConstant, while int8 weights still sit in ``dequantize(const)`` and have not
been folded into float.

The rewritten ``quantize`` no longer needs the float ops above it; DeadCodeElimination removes
them afterwards. A pattern that cannot be lowered keeps its float path (dequantize -> float op
-> quantize) unchanged, and the reason is recorded for the lowering report.

Patterns are matched by walking producer bindings (``var -> value``) rather than with
``tvm.relax.dpl``: the importer lowers Clip to ``call_tir(maximum/minimum)`` and the rewrite must
record which original bindings it consumed (to name ONNX nodes in the report), both awkward to
express as a declarative pattern.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from segcompile.compile.fixed_point import common_shift_multipliers
from segcompile.compile.passes.integer_kernels import (
    QRANGE,
    RESIZE_MULTIPLIER_BITS,
    RESIZE_WEIGHT_BITS,
    activation_bounds,
    affine_fixed_point,
    broadcast_const,
    broadcast_shape,
    centered,
    const,
    emit_clip_cast,
    emit_linear_resize_axis,
    emit_requantize,
    emit_rounding_right_shift,
    nearest_indices,
    round_half_even,
    shape_of,
)
from segcompile.compile.passes.lookup_table import ELEMENTWISE_OPS, lookup_table, op_attributes

# Operators that only move or select int8 values; they run unchanged on the int8 tensor.
LAYOUT_OPS = (
    "relax.reshape",
    "relax.permute_dims",
    "relax.expand_dims",
    "relax.squeeze",
    "relax.flatten",
    "relax.nn.max_pool2d",
    "relax.strided_slice",
)
# The importer emits Clip bounds as call_tir of TOPI maximum/minimum kernels, numbered per shape.
_CLIP_KERNEL = re.compile(r"^(maximum|minimum)\d*$")
# Relative tolerance for "these two float32 scales are the same scale".
SCALE_RTOL = 1e-6
# Largest float graph a lookup table replaces (ops between the dequantize and the quantize).
MAX_TABLE_OPS = 32
# ONNX Pad modes -> relax.nn.pad modes.
PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


class Unlowerable(Exception):
    """This pattern stays float; the message says why (it goes into the lowering report)."""


@dataclass(frozen=True)
class TensorQuant:
    """Per-tensor quantization of an activation."""

    scale: float
    zero_point: int
    dtype: str

    @property
    def qmin(self) -> int:
        return QRANGE[self.dtype][0]

    @property
    def qmax(self) -> int:
        return QRANGE[self.dtype][1]

    def same_as(self, other: TensorQuant) -> bool:
        return self.zero_point == other.zero_point and math.isclose(
            self.scale, other.scale, rel_tol=SCALE_RTOL
        )


@dataclass(frozen=True)
class PadSpec:
    """What an ONNX Pad node asks for (TVM imports Pad as an opaque call_tir, so it is read from ONNX)."""

    before: tuple[int, ...]  # per axis, full rank
    after: tuple[int, ...]
    mode: str  # ONNX mode: constant | reflect | edge | wrap
    value: float = 0.0  # the constant of constant mode


@dataclass
class LoweringLog:
    """What the pass did: original vars it replaced by integer code, and why others stayed float."""

    lowered: set = field(default_factory=set)  # original float vars absorbed into integer code
    failures: dict = field(default_factory=dict)  # original var producing a kept-float value -> reason


def _is_call(expr, name: str) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name


def _op_name(expr) -> str:
    if isinstance(expr, relax.Call):
        if isinstance(expr.op, tvm.ir.Op):
            if expr.op.name == "relax.call_tir":
                return f"call_tir({expr.args[0].name_hint})"
            return expr.op.name
        return str(expr.op)
    return type(expr).__name__


def _const_array(expr) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


@mutator
class QdqToIntegerMutator(PyExprMutator):
    """Rewrites every lowerable ``quantize`` root into integer Relax code (see module docstring)."""

    def __init__(self, mod: tvm.IRModule, var2val: dict, log: LoweringLog, pads: dict | None = None):
        super().__init__(mod)
        self.var2val = var2val
        self.log = log
        self.pads = pads or {}  # imported Pad var -> PadSpec

    # ---- graph queries on the original (imported) function -------------------------------
    def value(self, expr):
        """The value bound to ``expr`` if it is a var of the original function."""
        while isinstance(expr, relax.Var) and expr in self.var2val:
            bound = self.var2val[expr]
            if not isinstance(bound, relax.Var):
                return bound
            expr = bound
        return expr

    def constant(self, expr) -> np.ndarray | None:
        return _const_array(self.value(expr))

    def real_constant(self, expr) -> np.ndarray | None:
        """The real values of a float constant or of ``dequantize(integer constant)`` (float64), else None.

        Tools quantize constant operands too (onnxruntime: BatchNormalization's scale and bias, Mul/Add
        constants); their dequantized values are what the float graph computes with.
        """
        value = self.value(expr)
        if isinstance(value, tvm.ir.GenericConst):
            array = _const_array(value)
            return array.astype(np.float64) if array.dtype.kind == "f" else None
        if not _is_call(value, "relax.dequantize"):
            return None
        data, scale, zero = (self.constant(arg) for arg in value.args)
        if data is None:
            data = self.quantized_constant(value.args[0])
        if data is None or scale is None or zero is None or data.dtype.kind not in "iu":
            return None
        shape = [1] * data.ndim
        if scale.size > 1 or zero.size > 1:
            if data.ndim == 0:
                return None
            shape[int(value.attrs.axis) % data.ndim] = -1
        scale = scale.astype(np.float64).reshape(shape if scale.size > 1 else ())
        zero = zero.astype(np.float64).reshape(shape if zero.size > 1 else ())
        return (data.astype(np.float64) - zero) * scale

    def activation(self, expr) -> tuple[relax.Expr, TensorQuant]:
        """``expr`` must be ``dequantize(int8 activation, scalar scale, scalar zero point)``."""
        dq = self.value(expr)
        if not _is_call(dq, "relax.dequantize"):
            raise Unlowerable(f"input is {_op_name(dq)}, not a dequantized int8 tensor")
        data, scale, zero = dq.args
        if self.constant(data) is not None:
            raise Unlowerable("input is a constant, not an activation")
        scale_v, zero_v = self.constant(scale), self.constant(zero)
        if scale_v is None or zero_v is None or scale_v.size != 1 or zero_v.size != 1:
            raise Unlowerable("activation is not quantized per tensor with constant parameters")
        dtype = str(data.ty.dtype)
        if dtype not in QRANGE:
            raise Unlowerable(f"activation dtype {dtype} is not int8/uint8")
        return data, TensorQuant(float(scale_v.reshape(())), int(zero_v.reshape(())), dtype)

    def operand(self, expr) -> tuple[relax.Expr, TensorQuant]:
        """An int8 operand of an elementwise op: a rewritten activation or a quantized constant."""
        dq = self.value(expr)
        if _is_call(dq, "relax.dequantize") and self.constant(dq.args[0]) is not None:
            data, scale, zero = (self.constant(arg) for arg in dq.args)
            if scale is None or zero is None or scale.size != 1 or zero.size != 1:
                raise Unlowerable("constant operand is not quantized per tensor")
            if str(data.dtype) not in QRANGE:
                raise Unlowerable(f"constant operand dtype {data.dtype} is not int8/uint8")
            qp = TensorQuant(float(scale.reshape(())), int(zero.reshape(())), str(data.dtype))
            return const(data, str(data.dtype)), qp
        data, qp = self.activation(expr)
        return self.int_input(data), qp

    def weight(self, expr) -> tuple[np.ndarray, np.ndarray, int]:
        """``expr`` must be ``dequantize(int8 const, scale, zero point 0)``: (int8 W, scale, axis)."""
        dq = self.value(expr)
        if not _is_call(dq, "relax.dequantize"):
            raise Unlowerable(f"weight is {_op_name(dq)}, not a dequantized int8 constant")
        data, scale, zero = (self.constant(arg) for arg in dq.args)
        if data is None:
            data = self.quantized_constant(dq.args[0])
        if data is None or scale is None or zero is None:
            raise Unlowerable("weight or its quantization parameters are not constants")
        if data.dtype != np.int8:
            raise Unlowerable(f"weight dtype {data.dtype} is not int8")
        if np.any(zero != 0):
            raise Unlowerable("weight zero point is not 0 (asymmetric weights are not supported)")
        return data, scale.astype(np.float64).reshape(-1), int(dq.attrs.axis)

    def quantized_constant(self, expr) -> np.ndarray | None:
        """Values of ``quantize(float const)`` computed now, as onnxruntime would at run time.

        Fake-quantized exports (QAT) store float weights behind QuantizeLinear instead of int8
        initializers; quantizing them here (ties to even, like QuantizeLinear) keeps them int8.
        """
        q = self.value(expr)
        if not _is_call(q, "relax.quantize"):
            return None
        real, scale, zero = (self.constant(arg) for arg in q.args)
        if real is None or scale is None or zero is None:
            return None
        dtype = str(q.attrs.out_dtype)
        if dtype not in QRANGE:
            return None
        axis = int(q.attrs.axis) % real.ndim
        shape = [1] * real.ndim
        if scale.size > 1:
            shape[axis] = scale.size
        scale32 = scale.astype(np.float32).reshape(shape if scale.size > 1 else ())
        zero_b = zero.astype(np.int64).reshape(shape if zero.size > 1 else ())
        levels = np.round(real.astype(np.float32) / scale32).astype(np.int64) + zero_b
        return np.clip(levels, *QRANGE[dtype]).astype(dtype)

    def bias_in_accumulator(self, expr, acc_scale: np.ndarray, channels: int) -> np.ndarray:
        """The bias as int32 at the accumulator scale ``s_in * s_w`` (per output channel)."""
        dq = self.value(expr)
        if _is_call(dq, "relax.reshape"):
            dq = self.value(dq.args[0])
        if _is_call(dq, "relax.dequantize"):
            data, scale, zero = (self.constant(arg) for arg in dq.args)
            if data is None or scale is None or zero is None:
                raise Unlowerable("bias is not a constant")
            real = (data.astype(np.float64) - zero.astype(np.float64)) * scale.astype(np.float64)
            scale_matches = np.allclose(scale.astype(np.float64) * np.ones(channels), acc_scale, rtol=1e-5)
            if data.dtype == np.int32 and np.all(zero == 0) and scale_matches:
                return data.reshape(-1).astype(np.int32)  # the usual case: already at s_in * s_w
        else:
            real = self.constant(dq)
            if real is None:
                raise Unlowerable("bias is not a constant")
        real = np.broadcast_to(real.astype(np.float64).reshape(-1), (channels,))
        return np.round(real / acc_scale).astype(np.int64).clip(-(2**31), 2**31 - 1).astype(np.int32)

    def activation_interval(self, expr) -> tuple[relax.Expr, tuple[float, float], list]:
        """Peel ReLU / Clip (as imported) off ``expr``: (inner expr, float interval, peeled vars)."""
        low, high = -math.inf, math.inf
        peeled = []
        while True:
            value = self.value(expr)
            if _is_call(value, "relax.nn.relu"):
                low = max(low, 0.0)
            elif _is_call(value, "relax.clip"):
                low = max(low, float(value.args[1].value))
                high = min(high, float(value.args[2].value))
            elif _is_call(value, "relax.call_tir") and _CLIP_KERNEL.match(value.args[0].name_hint):
                # The ONNX importer emits Clip(x, min, max) as call_tir(maximum/minimum, x, bound).
                inner, bound = value.args[1].fields
                bound_v = self.constant(self._through_where(bound))
                if bound_v is None or bound_v.size != 1:
                    break
                if value.args[0].name_hint.startswith("maximum"):
                    low = max(low, float(bound_v.reshape(())))
                else:
                    high = min(high, float(bound_v.reshape(())))
                peeled.append(expr)
                expr = inner
                continue
            else:
                break
            peeled.append(expr)
            expr = value.args[0]
        return expr, (low, high), peeled

    def _through_where(self, expr):
        """The importer guards clip bounds with where(isnan(b), inf, b); see through it."""
        value = self.value(expr)
        if _is_call(value, "relax.where"):
            return value.args[2]
        return expr

    # ---- the rewrite ---------------------------------------------------------------------
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        if _is_call(call, "relax.quantize"):
            try:
                return self.lower_quantize(call)
            except Exception as why:  # noqa: BLE001 - any failure keeps this op float, never crashes
                reason = str(why) if isinstance(why, Unlowerable) else f"lowering failed: {why}"
                inner, _, peeled = self.activation_interval(call.args[0])
                for var in [*peeled, inner]:
                    if isinstance(var, relax.Var):
                        self.log.failures.setdefault(var, reason.strip().splitlines()[0])
        return super().visit_call_(call)

    def lower_quantize(self, call: relax.Call) -> relax.Expr:
        scale, zero = self.constant(call.args[1]), self.constant(call.args[2])
        if scale is None or zero is None or scale.size != 1 or zero.size != 1:
            raise Unlowerable("output is not quantized per tensor with constant parameters")
        out = TensorQuant(float(scale.reshape(())), int(zero.reshape(())), str(call.attrs.out_dtype))
        if out.dtype not in QRANGE:
            raise Unlowerable(f"output dtype {out.dtype} is not int8/uint8")
        inner, interval, peeled = self.activation_interval(call.args[0])
        lo, hi = activation_bounds(interval, out.scale, out.zero_point, out.dtype)
        value = self.value(inner)
        if isinstance(value, relax.Var) and value not in self.var2val:
            raise Unlowerable("input of the model: quantized at the entrance")
        handlers = {
            "relax.add": self.lower_add,
            "relax.subtract": self.lower_add,
            "relax.nn.conv2d": self.lower_conv,
            "relax.nn.conv2d_transpose": self.lower_conv_transpose,
            "relax.matmul": self.lower_matmul,
            "relax.multiply": self.lower_multiply,
            "relax.divide": self.lower_divide,
            "relax.concat": self.lower_concat,
            "relax.image.resize2d": self.lower_resize,
            "relax.nn.avg_pool2d": self.lower_avg_pool,
            "relax.mean": self.lower_mean,
            "relax.dequantize": self.lower_requantize,
            "TupleGetItem": self.lower_tuple_item,
        }
        name = _op_name(value)
        try:
            if name in LAYOUT_OPS:
                handler = self.lower_layout
            elif name in handlers:
                handler = handlers[name]
            elif inner in self.pads:
                handler = partial(self.lower_pad, self.pads[inner])
            else:
                raise Unlowerable(f"no integer kernel for {name}")
            result, consumed = handler(value, out, lo, hi)
        except Unlowerable:
            # Any elementwise function of one int8 tensor still has an exact integer form: a table.
            table = self.lower_elementwise_table(call.args[0], out)
            if table is None:
                raise
            result, consumed = table
        self.log.lowered.update(peeled)
        self.log.lowered.add(inner)
        self.log.lowered.update(consumed)
        return result

    def int_input(self, expr) -> relax.Expr:
        """The (already rewritten) int8 tensor behind an original activation var."""
        return self.visit_expr(expr)

    # Each lower_* returns (final int8 expression, original vars it absorbed besides the root).
    def lower_requantize(self, dq, out: TensorQuant, lo: int, hi: int):
        """dequantize -> [relu/clip] -> quantize: a scale change and/or a clip on int8."""
        data, qp = self.activation(dq)
        return self.requantize_activation(self.int_input(data), qp, out, lo, hi), []

    def requantize_activation(self, data, qp: TensorQuant, out: TensorQuant, lo: int, hi: int) -> relax.Expr:
        bb = self.builder_
        if qp.same_as(out) and qp.dtype == out.dtype:
            if (lo, hi) == (qp.qmin, qp.qmax):
                return data
            clipped = bb.emit(relax.op.maximum(data, const(lo, qp.dtype)))
            return relax.op.minimum(clipped, const(hi, qp.dtype))
        return emit_requantize(
            bb,
            centered(bb, data, qp.zero_point, "int32"),
            qp.scale / out.scale,
            out.zero_point,
            lo,
            hi,
            out.dtype,
        )

    def lower_layout(self, value, out: TensorQuant, lo: int, hi: int):
        """Reshape/transpose/max-pool... applied to the int8 tensor, then requantized if needed."""
        chain = []
        expr = value
        while _op_name(expr) in LAYOUT_OPS:
            chain.append(expr)
            expr = self.value(expr.args[0])
        data, qp = self.activation(expr)
        result = self.int_input(data)
        for layout_call in reversed(chain):
            rebuilt = relax.Call(layout_call.op, [result, *layout_call.args[1:]], layout_call.attrs)
            result = self.builder_.emit(rebuilt)
        return self.requantize_activation(result, qp, out, lo, hi), self._vars_of_chain(value)

    def _vars_of_chain(self, value) -> list:
        """Original vars bound inside a chain of single-input layout ops (for the report)."""
        found = []
        expr = value
        while _op_name(expr) in LAYOUT_OPS:
            arg = expr.args[0]
            if isinstance(arg, relax.Var):
                found.append(arg)
            expr = self.value(arg)
        return found

    def weighted_accumulator(self, conv, qp: TensorQuant, bias, channel_axis: int):
        """int8 weight, per-output-channel accumulator scale and int32 bias of a conv-like op.

        ``channel_axis`` is where the output channels sit in the weight (0 for conv2d's OIHW,
        1 for conv2d_transpose's IOHW); the weight scale must be per tensor or along that axis.
        """
        weight, w_scale, w_axis = self.weight(conv.args[1])
        channels = weight.shape[channel_axis]
        if w_scale.size not in (1, channels) or (w_scale.size > 1 and w_axis != channel_axis):
            raise Unlowerable(f"{_op_name(conv)} weight scale is neither per tensor nor per output channel")
        acc_scale = qp.scale * np.broadcast_to(w_scale, (channels,))
        bias_int = np.zeros(channels, np.int64)
        if bias is not None:
            bias_int = self.bias_in_accumulator(bias, acc_scale, channels).astype(np.int64)
        return weight, acc_scale, bias_int

    def lower_conv(self, conv, out: TensorQuant, lo: int, hi: int, bias=None, bias_var=None):
        attrs = conv.attrs
        if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW":
            raise Unlowerable(f"conv2d layout {attrs.data_layout}/{attrs.kernel_layout} is not NCHW/OIHW")
        data, qp = self.activation(conv.args[0])
        weight, acc_scale, bias_int = self.weighted_accumulator(conv, qp, bias, channel_axis=0)
        channels = weight.shape[0]
        bb = self.builder_
        x = self.int_input(data)
        padding = [int(p) for p in attrs.padding]
        if qp.zero_point and any(padding):
            # Padding must hold the zero point (real 0), so pad explicitly instead of in conv2d.
            top, left, bottom, right = padding
            x = bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, top, bottom, left, right], pad_value=qp.zero_point))
            padding = [0, 0, 0, 0]
        if qp.zero_point:
            # sum((x - z) * w) = sum(x * w) - z * sum(w): fold the correction into the bias.
            bias_int = bias_int - qp.zero_point * weight.reshape(channels, -1).astype(np.int64).sum(axis=1)
        acc = bb.emit(
            relax.op.nn.conv2d(
                x,
                const(weight, "int8"),
                strides=[int(s) for s in attrs.strides],
                padding=padding,
                dilation=[int(d) for d in attrs.dilation],
                groups=int(attrs.groups),
                out_dtype="int32",
            )
        )
        if np.any(bias_int):
            acc = bb.emit(relax.op.add(acc, const(bias_int.reshape(1, channels, 1, 1), "int32")))
        # |acc| <= max|x| * sum|w| + |bias| per output channel: proves whether int32 is enough.
        input_magnitude = max(abs(qp.qmin), abs(qp.qmax))
        bound = int(
            (
                input_magnitude * np.abs(weight.reshape(channels, -1).astype(np.int64)).sum(axis=1)
                + np.abs(bias_int)
            ).max()
        )
        result = emit_requantize(
            bb, acc, acc_scale / out.scale, out.zero_point, lo, hi, out.dtype, 1, accumulator_bound=bound
        )
        consumed = [bias_var] if bias_var is not None else []
        return result, consumed

    def lower_conv_transpose(self, conv, out: TensorQuant, lo: int, hi: int, bias=None, bias_var=None):
        """Transposed conv (learned upsampling): int8 x int8 -> int32, then requantize per channel.

        The input zero point cannot be folded into the bias as for conv2d (how many taps reach an output
        pixel depends on its position), so a zero-point input is centred first, in int16.
        """
        attrs = conv.attrs
        if attrs.data_layout != "NCHW" or attrs.kernel_layout != "IOHW" or attrs.out_layout != "NCHW":
            raise Unlowerable(
                f"conv2d_transpose layout {attrs.data_layout}/{attrs.kernel_layout} is not NCHW/IOHW"
            )
        if int(attrs.groups) != 1:
            raise Unlowerable("grouped conv2d_transpose (its per-channel weight scales have no single axis)")
        data, qp = self.activation(conv.args[0])
        weight, acc_scale, bias_int = self.weighted_accumulator(conv, qp, bias, channel_axis=1)
        channels = weight.shape[1]
        bb = self.builder_
        x = self.int_input(data)
        w = const(weight, "int8")
        if qp.zero_point:
            x = centered(bb, x, qp.zero_point, "int16")
            w = const(weight.astype(np.int16), "int16")
        acc = bb.emit(
            relax.op.nn.conv2d_transpose(
                x,
                w,
                strides=[int(s) for s in attrs.strides],
                padding=[int(p) for p in attrs.padding],
                output_padding=[int(p) for p in attrs.output_padding],
                dilation=[int(d) for d in attrs.dilation],
                groups=1,
                data_layout="NCHW",
                kernel_layout="IOHW",
                out_dtype="int32",
            )
        )
        if np.any(bias_int):
            acc = bb.emit(relax.op.add(acc, const(bias_int.reshape(1, channels, 1, 1), "int32")))
        # Every output pixel sums at most all C_in x kh x kw taps of its channel.
        input_magnitude = max(qp.zero_point - qp.qmin, qp.qmax - qp.zero_point)
        per_channel = np.abs(weight.astype(np.int64)).sum(axis=(0, 2, 3))
        bound = int((input_magnitude * per_channel + np.abs(bias_int)).max())
        result = emit_requantize(
            bb, acc, acc_scale / out.scale, out.zero_point, lo, hi, out.dtype, 1, accumulator_bound=bound
        )
        return result, [bias_var] if bias_var is not None else []

    def lower_matmul(self, matmul, out: TensorQuant, lo: int, hi: int, bias=None, bias_var=None):
        data, qp = self.activation(matmul.args[0])
        weight_expr = self.value(matmul.args[1])
        transposed = _is_call(weight_expr, "relax.permute_dims")
        if transposed:
            axes = [int(a) for a in weight_expr.attrs.axes] if weight_expr.attrs.axes is not None else [1, 0]
            if axes != [1, 0]:
                raise Unlowerable("matmul weight transpose is not a 2-D transpose")
            weight_expr = weight_expr.args[0]
        weight, w_scale, w_axis = self.weight(weight_expr)
        if weight.ndim != 2:
            raise Unlowerable("matmul weight is not a 2-D constant")
        if transposed:
            weight, w_axis = weight.T.copy(), 1 - w_axis
        columns = weight.shape[1]
        if w_scale.size not in (1, columns) or (w_scale.size > 1 and w_axis != 1):
            raise Unlowerable("matmul weight scale is neither per tensor nor per output column")
        acc_scale = qp.scale * np.broadcast_to(w_scale, (columns,))
        bias_int = np.zeros(columns, np.int64)
        if bias is not None:
            bias_int = self.bias_in_accumulator(bias, acc_scale, columns).astype(np.int64)
        if qp.zero_point:
            bias_int = bias_int - qp.zero_point * weight.astype(np.int64).sum(axis=0)
        bb = self.builder_
        acc = bb.emit(relax.op.matmul(self.int_input(data), const(weight, "int8"), out_dtype="int32"))
        if np.any(bias_int):
            acc = bb.emit(relax.op.add(acc, const(bias_int, "int32")))
        ndim = len(shape_of(acc))
        input_magnitude = max(abs(qp.qmin), abs(qp.qmax))
        bound = int((input_magnitude * np.abs(weight.astype(np.int64)).sum(axis=0) + np.abs(bias_int)).max())
        result = emit_requantize(
            bb,
            acc,
            acc_scale / out.scale,
            out.zero_point,
            lo,
            hi,
            out.dtype,
            ndim - 1,
            accumulator_bound=bound,
        )
        consumed = [bias_var] if bias_var is not None else []
        return result, consumed

    def lower_add(self, add, out: TensorQuant, lo: int, hi: int):
        left, right = add.args
        # conv/matmul followed by a constant bias add, as the importer writes Conv/Gemm with bias.
        for main, bias in ((left, right), (right, left)):
            main_value = self.value(main)
            lower = {
                "relax.nn.conv2d": self.lower_conv,
                "relax.nn.conv2d_transpose": self.lower_conv_transpose,
                "relax.matmul": self.lower_matmul,
            }.get(_op_name(main_value))
            if lower is not None and self._is_constant_path(bias):
                if _is_call(add, "relax.subtract"):
                    raise Unlowerable("constant subtracted from a conv/matmul output")
                result, consumed = lower(main_value, out, lo, hi, bias=bias, bias_var=None)
                return result, [main, *consumed]
        try:
            (a, qa), (b, qb) = self.operand(left), self.operand(right)
        except Unlowerable:
            affine = self.lower_constant_affine(add, out, lo, hi)
            if affine is None:
                raise
            return affine
        sign = -1.0 if _is_call(add, "relax.subtract") else 1.0
        bb = self.builder_
        (m_a, m_b), shift = common_shift_multipliers([qa.scale / out.scale, qb.scale / out.scale])
        # One rounding for the sum: both terms scaled to a shared fixed-point shift in int64.
        term_a = bb.emit(relax.op.multiply(centered(bb, a, qa.zero_point, "int64"), const(m_a, "int64")))
        term_b = bb.emit(
            relax.op.multiply(centered(bb, b, qb.zero_point, "int64"), const(int(sign) * m_b, "int64"))
        )
        total = bb.emit(relax.op.add(term_a, term_b))
        shifted = emit_rounding_right_shift(bb, total, np.int64(shift))
        return emit_clip_cast(bb, shifted, out.zero_point, lo, hi, out.dtype), []

    def _is_constant_path(self, expr) -> bool:
        value = self.value(expr)
        while _is_call(value, "relax.reshape") or _is_call(value, "relax.dequantize"):
            value = self.value(value.args[0])
        return isinstance(value, tvm.ir.GenericConst)

    def lower_multiply(self, mul, out: TensorQuant, lo: int, hi: int):
        try:
            (a, qa), (b, qb) = self.operand(mul.args[0]), self.operand(mul.args[1])
        except Unlowerable:
            affine = self.lower_constant_affine(mul, out, lo, hi)
            if affine is None:
                raise
            return affine
        bb = self.builder_
        product = bb.emit(
            relax.op.multiply(
                centered(bb, a, qa.zero_point, "int32"),
                centered(bb, b, qb.zero_point, "int32"),
            )
        )
        return emit_requantize(
            bb, product, qa.scale * qb.scale / out.scale, out.zero_point, lo, hi, out.dtype
        ), []

    def lower_divide(self, div, out: TensorQuant, lo: int, hi: int):
        affine = self.lower_constant_affine(div, out, lo, hi)
        if affine is None:
            raise Unlowerable("division by an activation has no integer kernel")
        return affine

    def lower_tuple_item(self, item, out: TensorQuant, lo: int, hi: int):
        """``batch_norm(...)[0]``: the importer returns BatchNormalization as a tuple."""
        source = self.value(item.tuple_value)
        if int(item.index) == 0 and _is_call(source, "relax.nn.batch_norm"):
            result, consumed = self.lower_batch_norm(source, out, lo, hi)
            return result, [item.tuple_value, *consumed]
        raise Unlowerable(f"no integer kernel for item {int(item.index)} of {_op_name(source)}")

    def lower_batch_norm(self, bn, out: TensorQuant, lo: int, hi: int):
        """Unfused inference BatchNorm: a per-channel affine map done in fixed point.

        BN after a Concat or an Add cannot be folded into a conv, and folding it into the preceding
        per-tensor requantize is exact only when every channel has the same scale; a per-channel
        ``(x - z) * M_c + B_c`` with one rounding shift (integer_kernels.affine_fixed_point) is exact to
        within a rounding step for any gamma, beta, mean and variance, negative gammas included.
        """
        attrs = bn.attrs
        if bool(attrs.training):
            raise Unlowerable("batch_norm in training mode (batch statistics)")
        data, qp = self.activation(bn.args[0])
        gamma, beta, mean, var = (self.real_constant(arg) for arg in bn.args[1:5])
        if any(v is None for v in (gamma, beta, mean, var)):
            raise Unlowerable("batch_norm parameters are not constants")
        shape = shape_of(data)
        axis = int(attrs.axis) % len(shape)
        channels = shape[axis]
        gamma = gamma.astype(np.float64) if bool(attrs.scale) else np.ones(channels)
        beta = beta.astype(np.float64) if bool(attrs.center) else np.zeros(channels)
        factor = gamma / np.sqrt(var.astype(np.float64) + float(attrs.epsilon))
        offset = beta - mean.astype(np.float64) * factor
        factor = broadcast_shape(np.broadcast_to(factor, (channels,)), len(shape), axis)
        offset = broadcast_shape(np.broadcast_to(offset, (channels,)), len(shape), axis)
        return self.emit_affine(data, qp, factor, offset, out, lo, hi), []

    def emit_affine(self, data, qp: TensorQuant, factor, offset, out: TensorQuant, lo: int, hi: int):
        """``Q_out(DQ(data) * factor + offset)`` for constant (broadcastable) real ``factor``/``offset``."""
        input_magnitude = max(qp.zero_point - qp.qmin, qp.qmax - qp.zero_point)
        factor, offset = np.broadcast_arrays(np.asarray(factor, np.float64), np.asarray(offset, np.float64))
        try:
            multiplier, bias, shift = affine_fixed_point(
                factor * (qp.scale / out.scale), offset / out.scale, input_magnitude
            )
        except ValueError as why:
            raise Unlowerable(f"per-channel affine: {why}") from why
        bb = self.builder_
        wide = centered(bb, self.int_input(data), qp.zero_point, "int64")
        wide = bb.emit(relax.op.multiply(wide, broadcast_const(multiplier, "int64")))
        if np.any(bias):
            wide = bb.emit(relax.op.add(wide, broadcast_const(bias, "int64")))
        shifted = emit_rounding_right_shift(bb, wide, np.int64(shift))
        return emit_clip_cast(bb, shifted, out.zero_point, lo, hi, out.dtype)

    def lower_constant_affine(self, call, out: TensorQuant, lo: int, hi: int):
        """An activation times, plus, minus or divided by a constant tensor: a per-element affine map.

        Other exporters write an unfoldable BatchNorm as Mul + Add by per-channel constants (tf2onnx), and
        models scale or shift activations by constants; both are exact in fixed point (emit_affine). The
        constant may be float or dequantized from integers (any granularity). Returns None unless exactly
        one operand is a constant.
        """
        op = call.op.name
        left, right = call.args
        constants = [self.real_constant(arg) for arg in (left, right)]
        if sum(c is not None for c in constants) != 1:
            return None
        first_is_constant = constants[0] is not None
        value = constants[0] if first_is_constant else constants[1]
        data, qp = self.activation(right if first_is_constant else left)
        shape = tuple(shape_of(data))
        if np.broadcast_shapes(value.shape, shape) != shape:
            raise Unlowerable("the constant operand broadcasts the activation to a larger shape")
        if op == "relax.multiply":
            factor, offset = value, 0.0
        elif op == "relax.add":
            factor, offset = 1.0, value
        elif op == "relax.subtract":
            factor, offset = (-1.0, value) if first_is_constant else (1.0, -value)
        elif op == "relax.divide" and not first_is_constant:
            if np.any(value == 0):
                raise Unlowerable("division by a constant holding 0")
            factor, offset = 1.0 / value, 0.0
        else:
            raise Unlowerable(f"{op} of a constant by an activation is not affine")
        return self.emit_affine(data, qp, factor, offset, out, lo, hi), []

    def lower_pad(self, spec: PadSpec, pad, out: TensorQuant, lo: int, hi: int):
        """Pad on int8: constant mode pads with the quantized constant, reflect/edge only move data."""
        if spec.mode not in PAD_MODES:
            raise Unlowerable(f"pad mode {spec.mode}")
        if any(p < 0 for p in (*spec.before, *spec.after)):
            raise Unlowerable("pad with negative pads (cropping)")
        if not _is_call(pad, "relax.call_tir") or len(pad.args[1].fields) != 1:
            raise Unlowerable(f"pad imported as {_op_name(pad)}")
        data, qp = self.activation(pad.args[1].fields[0])
        if len(spec.before) != len(shape_of(data)):
            raise Unlowerable("pad widths do not match the input rank")
        bb = self.builder_
        # Requantize first and pad after, so the padding constant is rounded once, at the output scale,
        # exactly as QuantizeLinear rounds the float constant after a float Pad.
        x = bb.emit(self.requantize_activation(self.int_input(data), qp, out, lo, hi))
        width = [w for pair in zip(spec.before, spec.after, strict=True) for w in pair]
        fill = min(hi, max(lo, round_half_even(spec.value / out.scale) + out.zero_point))
        return relax.op.nn.pad(x, width, pad_mode=PAD_MODES[spec.mode], pad_value=fill), []

    def lower_elementwise_table(self, root, out: TensorQuant):
        """``quantize(f(dequantize(x)))`` for an elementwise ``f`` of one int8 tensor: a 256-entry table.

        Returns ``(int8 expression, consumed vars)``, or None when the float graph under ``root`` is not
        such a function (then the caller's reason stands). See lookup_table.py for why a table.
        """
        trace = _ElementwiseTrace(self)
        try:
            graph = trace.visit(root, 0)
        except Unlowerable:
            return None
        if trace.source is None:
            return None  # constants only
        data, qp = trace.source
        if shape_of(root) != shape_of(data):
            return None  # a broadcasting constant changed the shape: not one value in, one value out
        try:
            table = lookup_table(
                graph, qp.scale, qp.zero_point, qp.dtype, out.scale, out.zero_point, out.dtype
            )
        except ValueError:
            return None
        bb = self.builder_
        index = centered(bb, self.int_input(data), qp.qmin, "int32")  # q - qmin: 0..255
        lookup = relax.op.take(const(table, out.dtype), index, axis=0, mode="clip")
        return lookup, trace.vars

    def lower_concat(self, concat, out: TensorQuant, lo: int, hi: int):
        items = self.value(concat.args[0])
        if not isinstance(items, relax.Tuple):
            raise Unlowerable("concat of a non-literal tuple")
        pieces = []
        for item in items.fields:
            data, qp = self.activation(item)
            pieces.append(
                self.builder_.emit(self.requantize_activation(self.int_input(data), qp, out, lo, hi))
            )
        return relax.op.concat(pieces, axis=int(concat.attrs.axis)), []

    def lower_resize(self, resize, out: TensorQuant, lo: int, hi: int):
        attrs = resize.attrs
        if attrs.layout != "NCHW":
            raise Unlowerable(f"resize layout {attrs.layout}")
        if any(float(r) != 0.0 for r in attrs.roi):
            raise Unlowerable("resize with a region of interest")
        mode = str(attrs.coordinate_transformation_mode)
        if mode not in (
            "half_pixel",
            "pytorch_half_pixel",
            "align_corners",
            "asymmetric",
            "tf_half_pixel_for_nn",
        ):
            raise Unlowerable(f"resize coordinate mode {mode}")
        data, qp = self.activation(resize.args[0])
        out_h, out_w = shape_of(resize)[2:]
        bb = self.builder_
        x = self.int_input(data)
        method = str(attrs.method)
        if method == "nearest_neighbor":
            rounding = str(attrs.rounding_method) or "round_prefer_floor"
            in_h, in_w = shape_of(data)[2:]
            rows = nearest_indices(out_h, in_h, mode, rounding)
            cols = nearest_indices(out_w, in_w, mode, rounding)
            x = bb.emit(relax.op.take(x, const(rows, "int64"), axis=2, mode="clip"))
            x = bb.emit(relax.op.take(x, const(cols, "int64"), axis=3, mode="clip"))
            return self.requantize_activation(x, qp, out, lo, hi), []
        if method != "linear":
            raise Unlowerable(f"resize method {method}")
        # Bilinear as two separable passes of two-tap fixed-point weights in int32; one rounding
        # at the end (see integer_kernels.RESIZE_WEIGHT_BITS for the error bound).
        wide = centered(bb, x, qp.zero_point, "int32")
        wide = emit_linear_resize_axis(bb, wide, 3, out_w, mode)
        wide = emit_linear_resize_axis(bb, bb.emit(relax.op.astype(wide, "int64")), 2, out_h, mode)
        real_scale = qp.scale / out.scale / float(1 << (2 * RESIZE_WEIGHT_BITS))
        return emit_requantize(
            bb, wide, real_scale, out.zero_point, lo, hi, out.dtype, multiplier_bits=RESIZE_MULTIPLIER_BITS
        ), []

    def lower_avg_pool(self, pool, out: TensorQuant, lo: int, hi: int):
        attrs = pool.attrs
        if attrs.layout != "NCHW" or bool(attrs.ceil_mode):
            raise Unlowerable("avg_pool2d with ceil_mode or a non-NCHW layout")
        padding = [int(p) for p in attrs.padding]
        if any(padding) and not bool(attrs.count_include_pad):
            raise Unlowerable("avg_pool2d with padding excluded from the count (divisor varies at borders)")
        data, qp = self.activation(pool.args[0])
        bb = self.builder_
        x = self.int_input(data)
        channels = shape_of(data)[1]
        kh, kw = (int(k) for k in attrs.pool_size)
        if any(padding):
            top, left, bottom, right = padding
            x = bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, top, bottom, left, right], pad_value=qp.zero_point))
        # Window sums as a depthwise int8 convolution with a ones kernel: exact int32 sums.
        ones = np.ones((channels, 1, kh, kw), np.int8)
        window_sum = bb.emit(
            relax.op.nn.conv2d(
                x,
                const(ones, "int8"),
                strides=[int(s) for s in attrs.strides],
                dilation=[int(d) for d in attrs.dilation],
                groups=channels,
                out_dtype="int32",
            )
        )
        count = kh * kw
        if qp.zero_point:
            window_sum = bb.emit(relax.op.subtract(window_sum, const(qp.zero_point * count, "int32")))
        return _requantize_mean(bb, window_sum, qp, out, lo, hi, count), []

    def lower_mean(self, mean, out: TensorQuant, lo: int, hi: int):
        data, qp = self.activation(mean.args[0])
        shape = shape_of(data)
        axes = (
            [int(a) % len(shape) for a in mean.attrs.axis]
            if mean.attrs.axis is not None
            else list(range(len(shape)))
        )
        count = int(np.prod([shape[a] for a in axes]))
        bb = self.builder_
        wide = centered(bb, self.int_input(data), qp.zero_point, "int32")
        total = bb.emit(relax.op.sum(wide, axis=axes, keepdims=bool(mean.attrs.keepdims)))
        return _requantize_mean(bb, total, qp, out, lo, hi, count), []


class _ElementwiseTrace:
    """Walks the float graph under a quantize root, checking it is elementwise in one dequantized tensor.

    ``visit`` returns a numpy function of the dequantized input (float32 in, float32 out) built from
    :data:`~segcompile.compile.passes.lookup_table.ELEMENTWISE_OPS`; it raises Unlowerable for anything
    else (a second activation, a non-scalar constant, an op without a numpy twin, a non-float32 value).
    """

    def __init__(self, mutator: QdqToIntegerMutator):
        self.mutator = mutator
        self.source: tuple[relax.Expr, TensorQuant] | None = None
        self.vars: list = []
        self.count = 0

    def visit(self, expr, depth: int):
        m = self.mutator
        if isinstance(expr, relax.Var) and expr in m.var2val and expr not in self.vars:
            self.vars.append(expr)
        value = m.value(expr)
        self.count += 1
        if depth > MAX_TABLE_OPS or self.count > 4 * MAX_TABLE_OPS:
            raise Unlowerable("elementwise graph too large for a table")
        scalar = self._scalar(value)
        if scalar is not None:
            return lambda x, c=scalar: np.float32(c)
        if _is_call(value, "relax.dequantize"):
            data, qp = m.activation(value)
            if self.source is None:
                self.source = (data, qp)
            elif not (self.source[0].same_as(data) and self.source[1] == qp):
                raise Unlowerable("elementwise graph of two different int8 tensors")
            return lambda x: x
        if not isinstance(value, relax.Call) or str(getattr(value.ty, "dtype", "")) != "float32":
            raise Unlowerable(f"{_op_name(value)} in an elementwise graph")
        name = _op_name(value)
        if _is_call(value, "relax.call_tir") and _CLIP_KERNEL.match(value.args[0].name_hint):
            inner, bound = value.args[1].fields
            bound_v = self._scalar(m.value(m._through_where(bound)))
            if bound_v is None:
                raise Unlowerable("clip bound is not a scalar constant")
            f = self.visit(inner, depth + 1)
            pick = np.maximum if name.startswith("call_tir(maximum") else np.minimum
            return lambda x: pick(f(x), np.float32(bound_v))
        if name == "relax.clip":
            f = self.visit(value.args[0], depth + 1)
            low, high = float(value.args[1].value), float(value.args[2].value)
            return lambda x: ELEMENTWISE_OPS[name](f(x), low, high)
        if name not in ELEMENTWISE_OPS:
            raise Unlowerable(f"{name} in an elementwise graph")
        kwargs = op_attributes(name, value.attrs)
        fs = [self.visit(arg, depth + 1) for arg in value.args]
        op = ELEMENTWISE_OPS[name]
        return lambda x: op(*(f(x) for f in fs), **kwargs)

    def _scalar(self, value) -> float | None:
        """A one-element float constant, or a dequantized one-element integer constant, as a float32."""
        array = self.mutator.real_constant(value)
        if array is None or array.size != 1:
            return None
        return float(np.float32(array.reshape(())))


def _requantize_mean(bb, total, qp, out: TensorQuant, lo: int, hi: int, count: int):
    """Requantize a sum of ``count`` int8 values as their mean: the 1/count folds into the multiplier."""
    return emit_requantize(
        bb,
        total,
        qp.scale / (out.scale * count),
        out.zero_point,
        lo,
        hi,
        out.dtype,
        accumulator_bound=255 * count,
    )


def lower_qdq_to_integer(
    mod: tvm.IRModule, log: LoweringLog | None = None, pads: dict | None = None
) -> tvm.IRModule:
    """Apply the rewrite to every Relax function of ``mod`` (fills ``log`` if given).

    ``pads`` maps the var of each imported ONNX Pad to its :class:`PadSpec` (without one, Pad stays float).
    """
    log = log if log is not None else LoweringLog()
    rewriter = QdqToIntegerMutator(mod, {}, log, pads)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.var2val = relax.analysis.get_var2val(func)
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return rewriter.builder_.get()


@tvm.transform.module_pass(opt_level=0, name="LowerQdqToInteger")
class LowerQdqToInteger:
    """Module pass wrapper: ``quantize(f(dequantize(...)))`` -> integer Relax (see module docstring)."""

    def __init__(self, log: LoweringLog | None = None, pads: dict | None = None):
        self.log = log if log is not None else LoweringLog()
        self.pads = pads or {}

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return lower_qdq_to_integer(mod, self.log, self.pads)
