"""A depthwise convolution and the 1x1 convolution after it as one kernel (MobileNet's separable blocks).

In a MobileNetV2 block the depthwise 3x3 output (6x the block's channels, e.g. 128x128x144 floats = 9 MB
at 512x512) is written to memory by one kernel and read back by the next. Depthwise arithmetic is light
(9 multiply-adds per value), so both kernels wait on that round trip: measured on Zen 4, a 144-channel
depthwise conv ran at a fifth of the FMA peak, bound by its stores. Here the depthwise result of a few
pixels (all channels) is computed right where the 1x1 convolution needs it and never leaves the cache.
Measured side by side (128x128, 144 -> 32 channels, 1 thread): 2.9 ms fused vs 5.1 ms as two kernels.

TVM's FuseOps never merges two reductions (both convolutions are ``kOutEWiseFusable``), so three pieces:
- :func:`fuse_depthwise_into_pointwise`: the Relax pass (channels-last float graphs, after ConvertLayout)
  replacing ``conv2d_1x1(act(depthwise(x) + bias))`` with a call to the kernel below, where ``act`` is
  any of max(., lo), min(., hi) (ReLU, ReLU6) and the depthwise result has no other use;
- :func:`depthwise_pointwise_conv2d`: that kernel (TE), marked fusable so the 1x1's bias and the block's
  residual add fuse into its output;
- :func:`schedule_depthwise_pointwise`: its schedule (called by cpu_schedules.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segcompile.compile.conv_shapes import conv_output_hw

# Block names of the kernel; the fused kernel keeps them as prefixes (FuseTIR may add a suffix).
PAD_BLOCK = "pad_depthwise"  # "pad" first: cpu_schedules keeps padding blocks out of its inlining
DEPTHWISE_BLOCK = "separable_depthwise"
ACTIVATION_BLOCK = "separable_activation"
POINTWISE_BLOCK = "separable_pointwise"
# Relax's kOutEWiseFusable: elementwise consumers (bias, residual add) fuse into the kernel's output.
_OUT_ELEMWISE_FUSABLE = 4
_LANE_TILES = (16, 8, 4)


@dataclass(frozen=True)
class SeparableGeometry:
    """Shapes and attributes of one depthwise (NHWC, HWIO weights) + 1x1 convolution pair."""

    data_shape: tuple[int, int, int, int]
    out_channels: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]
    has_bias: bool
    has_lower: bool  # max(., lower) after the bias (ReLU, first half of ReLU6)
    has_upper: bool  # min(., upper)

    @property
    def depthwise_shape(self) -> tuple[int, int, int, int]:
        n, h, w, c = self.data_shape
        out_h, out_w = conv_output_hw((h, w), self.kernel, self.strides, self.padding, self.dilation)
        return n, out_h, out_w, c

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        n, h, w, _ = self.depthwise_shape
        return n, h, w, self.out_channels


def depthwise_pointwise_conv2d(geometry: SeparableGeometry):
    """The kernel ``(data, depthwise_weight[KH,KW,C], [bias[C]], [lower[]], [upper[]], pointwise_weight[C,O])
    -> NHWC float32``: conv2d_1x1(act(depthwise(data) + bias)) with the operands ``geometry`` says it has."""
    from tvm import te, tirx

    n, h, w, channels = geometry.data_shape
    _, out_h, out_w, _ = geometry.depthwise_shape
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel, geometry.strides, geometry.dilation
    top, left, bottom, right = geometry.padding

    def shape(*dims: int) -> list:
        # int64 extents, like every legalized Relax kernel: FuseTIR merges buffers only of one index type.
        return [tirx.IntImm("int64", d) for d in dims]

    data = te.placeholder(shape(n, h, w, channels), "float32", "data")
    depthwise_weight = te.placeholder(shape(kh, kw, channels), "float32", "depthwise_weight")
    bias = te.placeholder(shape(channels), "float32", "bias") if geometry.has_bias else None
    lower = te.placeholder((), "float32", "lower") if geometry.has_lower else None
    upper = te.placeholder((), "float32", "upper") if geometry.has_upper else None
    pointwise_weight = te.placeholder(shape(channels, geometry.out_channels), "float32", "pointwise_weight")

    padded = te.compute(
        shape(n, h + top + bottom, w + left + right, channels),
        lambda b, y, x, c: tirx.if_then_else(
            tirx.all(y >= top, y < h + top, x >= left, x < w + left),
            data[b, y - top, x - left, c],
            tirx.const(0.0, "float32"),
        ),
        name=PAD_BLOCK,
    )
    rkh = te.reduce_axis((tirx.IntImm("int64", 0), tirx.IntImm("int64", kh)), "rkh")
    rkw = te.reduce_axis((tirx.IntImm("int64", 0), tirx.IntImm("int64", kw)), "rkw")
    depthwise = te.compute(
        shape(n, out_h, out_w, channels),
        lambda b, y, x, c: te.sum(
            padded[b, y * sh + rkh * dh, x * sw + rkw * dw, c] * depthwise_weight[rkh, rkw, c],
            axis=[rkh, rkw],
        ),
        name=DEPTHWISE_BLOCK,
    )

    def activation(b, y, x, c):
        value = depthwise[b, y, x, c]
        if bias is not None:
            value = value + bias[c]
        if lower is not None:
            value = tirx.max(value, lower())
        if upper is not None:
            value = tirx.min(value, upper())
        return value

    activated = te.compute(shape(n, out_h, out_w, channels), activation, name=ACTIVATION_BLOCK)
    rc = te.reduce_axis((tirx.IntImm("int64", 0), tirx.IntImm("int64", channels)), "rc")
    out = te.compute(
        shape(n, out_h, out_w, geometry.out_channels),
        lambda b, y, x, o: te.sum(activated[b, y, x, rc] * pointwise_weight[rc, o], axis=rc),
        name=POINTWISE_BLOCK,
    )
    operands = [data, depthwise_weight, bias, lower, upper, pointwise_weight]
    func = te.create_prim_func([t for t in operands if t is not None] + [out])
    return func.with_attr("op_pattern", _OUT_ELEMWISE_FUSABLE)


def fuse_depthwise_into_pointwise():
    """Relax pass: every float32 ``conv2d_1x1(act(depthwise_conv2d(x) + bias))`` in channels-last layout,
    whose intermediate values have no other use, becomes one call to :func:`depthwise_pointwise_conv2d`."""
    import tvm
    from tvm import relax

    from segcompile.compile.passes.relax_exprs import constant_through_permutes, is_call, use_counts

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.kernels: dict[SeparableGeometry, object] = {}
            self.uses: dict = {}

        def _single_use(self, expr):
            """The expression bound to ``expr`` if it is a dataflow var used exactly once, else None."""
            if not isinstance(expr, relax.Var) or self.uses.get(expr, 0) != 1:
                return None
            return self.lookup_binding(expr)

        def _activation(self, expr):
            """(depthwise call, bias array or None, lower expr or None, upper expr or None) or None."""
            lower = upper = bias = None
            value = self._single_use(expr)
            if is_call(value, "relax.minimum") and _is_scalar(value.args[1]):
                upper, value = value.args[1], self._single_use(value.args[0])
            if is_call(value, "relax.maximum") and _is_scalar(value.args[1]):
                lower, value = value.args[1], self._single_use(value.args[0])
            elif is_call(value, "relax.nn.relu"):
                lower, value = relax.const(0.0, "float32"), self._single_use(value.args[0])
            if is_call(value, "relax.add"):
                bias = constant_through_permutes(value.args[1], self.lookup_binding)
                if bias is None:
                    return None
                value = self._single_use(value.args[0])
            if not _is_depthwise(value):
                return None
            channels = int(value.args[0].ty.shape[3])
            if bias is not None:
                if bias.size != channels or bias.shape[-1] != channels:
                    return None  # a bias broadcast another way than per channel
                bias = bias.reshape(channels).astype(np.float32)
            return value, bias, lower, upper

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not _is_pointwise(call):
                return call
            pointwise_weight = constant_through_permutes(call.args[1], self.lookup_binding)
            found = self._activation(call.args[0])
            if pointwise_weight is None or found is None:
                return call
            depthwise, bias, lower, upper = found
            depthwise_weight = constant_through_permutes(depthwise.args[1], self.lookup_binding)
            if depthwise_weight is None:
                return call
            attrs = depthwise.attrs
            geometry = SeparableGeometry(
                data_shape=tuple(int(d) for d in depthwise.args[0].ty.shape),
                out_channels=int(pointwise_weight.shape[3]),
                kernel=(int(depthwise_weight.shape[0]), int(depthwise_weight.shape[1])),
                strides=tuple(int(s) for s in attrs.strides),
                padding=tuple(int(p) for p in attrs.padding),
                dilation=tuple(int(d) for d in attrs.dilation),
                has_bias=bias is not None,
                has_lower=lower is not None,
                has_upper=upper is not None,
            )
            if geometry not in self.kernels:
                kernel = depthwise_pointwise_conv2d(geometry).without_attr("global_symbol")  # private
                name = f"depthwise_pointwise_{len(self.kernels)}"
                self.kernels[geometry] = self.builder_.add_func(kernel, name)
            operands = [
                depthwise.args[0],
                relax.const(depthwise_weight[:, :, 0, :].astype(np.float32), "float32"),
                None if bias is None else relax.const(bias, "float32"),
                lower,
                upper,
                relax.const(pointwise_weight[0, 0].astype(np.float32), "float32"),
            ]
            return relax.call_tir(
                self.kernels[geometry],
                [op for op in operands if op is not None],
                relax.TensorType(geometry.out_shape, "float32"),
            )

    def _is_scalar(expr) -> bool:
        return len(expr.ty.shape) == 0 and str(expr.ty.dtype) == "float32"

    def _is_depthwise(expr) -> bool:
        if not is_call(expr, "relax.nn.conv2d"):
            return False
        attrs, data = expr.attrs, expr.args[0].ty
        channels = int(data.shape[3]) if attrs.data_layout == "NHWC" else -1
        return (
            attrs.data_layout == "NHWC"
            and str(attrs.kernel_layout) == "HWIO"
            and attrs.out_layout == "NHWC"
            and str(data.dtype) == "float32"
            and int(attrs.groups) == channels
            and int(expr.ty.shape[3]) == channels  # depth multiplier 1
        )

    def _is_pointwise(expr) -> bool:
        if not is_call(expr, "relax.nn.conv2d"):
            return False
        attrs = expr.attrs
        return (
            attrs.data_layout == "NHWC"
            and str(attrs.kernel_layout) == "HWIO"
            and attrs.out_layout == "NHWC"
            and str(expr.args[0].ty.dtype) == "float32"
            and str(expr.ty.dtype) == "float32"
            and int(attrs.groups) == 1
            and all(int(s) == 1 for s in attrs.strides)
            and all(int(p) == 0 for p in attrs.padding)
            and [int(expr.args[1].ty.shape[i]) for i in (0, 1)] == [1, 1]
        )

    @tvm.transform.module_pass(opt_level=0, name="FuseDepthwiseIntoPointwise")
    def _pass(mod, _ctx):
        rewriter = _Rewriter(mod)
        for gvar, func in mod.functions.items():
            if isinstance(func, relax.Function):
                rewriter.uses = use_counts(func)
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        return relax.transform.DeadCodeElimination()(rewriter.builder_.get())

    return _pass


def schedule_depthwise_pointwise(sch, pointwise_name: str) -> None:
    """Schedule the fused kernel around its 1x1 convolution ``pointwise_name``.

    The 1x1 convolution is tiled like every channels-last convolution (cpu_schedules: rows in parallel |
    pixel tiles | output-channel vectors | input channels | register block). Under each pixel tile, the
    depthwise values of those pixels are computed first, all channels, one vector of channels at a time
    in registers (taps | pixels unrolled | channel lanes), activated and kept in a small buffer that the
    1x1's input-channel loop reads. The input is read in place, its padding checked per tap and pixel.
    """
    from segcompile.compile.cpu_schedules import tile_channels_last, vectorize_loop

    pointwise = sch.get_sblock(pointwise_name)
    tile_channels_last(sch, pointwise_name)
    pixel_tiles = sch.get_loops(pointwise)[1]

    activation = _block_starting_with(sch, ACTIVATION_BLOCK)
    sch.compute_at(activation, pixel_tiles)
    pixels, channels = sch.get_loops(activation)[-2:]
    extent = int(sch.get(channels).extent)
    lanes = next((t for t in _LANE_TILES if extent % t == 0), extent)
    channel_vectors, channel_lanes = sch.split(channels, [None, lanes])
    sch.reorder(channel_vectors, pixels, channel_lanes)

    depthwise = _block_starting_with(sch, DEPTHWISE_BLOCK)
    sch.compute_at(depthwise, channel_vectors)
    sch.set_scope(depthwise, 0, "local")  # one register block: pixels x one vector of channels
    dw_pixels, dw_lanes, *taps = sch.get_loops(depthwise)[-4:]
    sch.reorder(*taps, dw_pixels, dw_lanes)
    sch.unroll(dw_pixels)
    sch.vectorize(dw_lanes)
    sch.decompose_reduction(depthwise, taps[0])
    sch.unroll(pixels)
    vectorize_loop(sch, channel_lanes)

    # The padding is read in place (a bounds check per tap and pixel, none per lane) rather than copied
    # row by row first: measured on MobileNetV2 + DeepLabV3Lite 512x512 (Zen 4, interleaved with
    # onnxruntime), 0.98x vs 1.03x with per-row copies; dilated ASPP layers would copy 2 * dilation + 1
    # rows per output row.
    sch.compute_inline(_block_starting_with(sch, PAD_BLOCK))


def _block_starting_with(sch, prefix: str):
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    (name,) = [n for n in names if n.startswith(prefix)]
    return sch.get_sblock(name)
