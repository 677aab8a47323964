"""ResizeToTapTables: float bilinear resizes become a kernel reading precomputed source rows, columns and
weights.

TVM's ``resize2d`` recomputes the source coordinate of every output pixel (a float multiply-add, a floor,
clamps and int64 index math per axis) before its four loads; on the last layer of a segmentation network
(21 classes upsampled x4 to 512x512) that arithmetic, not the loads, sets the time. The coordinates depend
only on the output row and column, so they are computed once, at compile time, with the same formula as
the integer path (``integer_kernels.resize_source_coordinates``), and the kernel is four loads and three
lerps per output.

The layout is chosen for the loads: a resize feeding the NCHW graph output (``permute_dims`` of an NHWC
resize, what ConvertLayout leaves at the exit) is turned around so that it transposes the small input and
resizes in NCHW, where a row of the output reads one or two rows of the input. A channels-last resize
concatenated with other tensors (DeepLabV3Lite's decoder: upsampled ASPP features + the shortcut) writes the
concatenated output itself: at 512x512 that saves writing and re-reading a 128x128x256 float tensor.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from segcompile.compile.passes.integer_kernels import resize_source_coordinates
from segcompile.compile.passes.relax_exprs import is_call, use_counts

# Block name of the kernel (cpu_schedules.py gives it its schedule).
RESIZE_BLOCK = "tap_resize"
COLUMNS_BLOCK = "tap_resize_cols"
# Relax's kOpaque: nothing fuses into the kernel (a fused transpose would turn its row loads into gathers).
_OPAQUE = 8
_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
_TO_NCHW = [0, 3, 1, 2]
# A concatenated part must be a whole number of AVX-512 float vectors (see tap_resize_kernel).
_VECTOR_CHANNELS = 16


def axis_taps(out_size: int, in_size: int, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First and second source index (int32) and the weight of the second (float32) per output index."""
    source = np.clip(resize_source_coordinates(out_size, in_size, mode), 0, in_size - 1)
    first = np.floor(source)
    second = np.minimum(first + 1, in_size - 1)
    return first.astype(np.int32), second.astype(np.int32), (source - first).astype(np.float32)


def tap_resize_kernel(
    in_shape: tuple[int, ...],
    out_hw: tuple[int, int],
    layout: str,
    dtype: str,
    appended_channels: tuple[int, ...] = (),
):
    """The kernel ``(data, rows0, rows1, row_weight, cols0, cols1, col_weight, *appended) -> resized``.

    ``appended_channels`` (NHWC only): tensors of the output's height and width concatenated after the
    resized channels, ``concat([resize(x), *appended], axis=channels)`` in one pass over the output.

    NCHW is separable: every input row is first resized along the width (block ``tap_resize_cols``), then
    each output row is a lerp of two of those rows. The second pass reads whole rows (vector loads); only
    the first, on ``in_h / out_h`` of the data, gathers columns. NHWC reads its four taps directly.
    """
    from tvm import te, tirx

    def shape(*dims: int) -> list:
        return [tirx.IntImm("int64", d) for d in dims]

    if layout == "NCHW":
        n, c, h, _ = in_shape
    else:
        n, h, _, c = in_shape
    out_h, out_w = out_hw
    data = te.placeholder(shape(*in_shape), dtype, "data")
    rows = [te.placeholder(shape(out_h), "int32", name) for name in ("rows0", "rows1")]
    row_weight = te.placeholder(shape(out_h), "float32", "row_weight")
    cols = [te.placeholder(shape(out_w), "int32", name) for name in ("cols0", "cols1")]
    col_weight = te.placeholder(shape(out_w), "float32", "col_weight")

    def lerp(a, z, t):
        return a + (z - a) * t

    if layout == "NCHW":
        widened = te.compute(
            shape(n, c, h, out_w),
            lambda b, ch, y, x: lerp(data[b, ch, y, cols[0][x]], data[b, ch, y, cols[1][x]], col_weight[x]),
            name=f"{COLUMNS_BLOCK}_nchw",
        )
        out = te.compute(
            shape(n, c, out_h, out_w),
            lambda b, ch, y, x: lerp(
                widened[b, ch, rows[0][y], x], widened[b, ch, rows[1][y], x], row_weight[y]
            ),
            name=RESIZE_BLOCK,
        )
    else:
        # Channels-last: the four taps of an output pixel are whole vectors of channels, read from an
        # input small enough to stay in cache, so one pass (no widened intermediate) is the fastest.
        appended = [
            te.placeholder(shape(n, out_h, out_w, extra), dtype, f"appended{i}")
            for i, extra in enumerate(appended_channels)
        ]

        def resized_or_appended(b, y, x, ch):
            value = lerp(
                lerp(data[b, rows[0][y], cols[0][x], ch], data[b, rows[0][y], cols[1][x], ch], col_weight[x]),
                lerp(data[b, rows[1][y], cols[0][x], ch], data[b, rows[1][y], cols[1][x], ch], col_weight[x]),
                row_weight[y],
            )
            # Channel ranges as nested selects; with every range a whole number of vectors, TVM's
            # simplifier reduces each condition to one per vector (no per-lane select).
            start = c
            for tensor, extra in zip(appended, appended_channels, strict=True):
                value = tirx.if_then_else(ch < start, value, tensor[b, y, x, ch - start])
                start += extra
            return value

        out_c = c + sum(appended_channels)
        out = te.compute(shape(n, out_h, out_w, out_c), resized_or_appended, name=RESIZE_BLOCK)
        func = te.create_prim_func([data, *rows, row_weight, *cols, col_weight, *appended, out])
        return func.with_attr("op_pattern", _OPAQUE)
    func = te.create_prim_func([data, *rows, row_weight, *cols, col_weight, out])
    return func.with_attr("op_pattern", _OPAQUE)


def schedule_tap_resize(sch, columns_block: str) -> None:
    """Both passes parallel over their two outer axes and vectorized along the innermost one.

    The width pass stays a full intermediate: its rows are picked by table lookups, which compute_at
    cannot bound, and it is ``in_h / out_h`` of the output's size.
    """
    from segcompile.compile.cpu_schedules import vectorize_loop

    for block in (sch.get_sblock(columns_block), sch.get_sblock(RESIZE_BLOCK)):
        loops = sch.get_loops(block)
        sch.parallel(sch.fuse(loops[0], loops[1]))
        vectorize_loop(sch, loops[-1])


@relax.expr_functor.mutator
class _ResizeRewriter(relax.PyExprMutator):
    def __init__(self, mod, bindings: dict, uses: dict):
        super().__init__(mod)
        self.bindings = bindings
        self.uses = uses
        self.kernels: dict[tuple, tvm.ir.GlobalVar] = {}

    def supported(self, call) -> bool:
        attrs = call.attrs
        info = call.args[0].ty
        return (
            is_call(call, "relax.image.resize2d")
            and str(attrs.method) == "linear"
            and str(attrs.coordinate_transformation_mode) in _MODES
            and str(attrs.layout) in ("NCHW", "NHWC")
            and str(info.dtype) == "float32"
            and all(float(r) == 0.0 for r in attrs.roi)
            and all(isinstance(d, tvm.tirx.IntImm) for d in info.shape.values)
            and all(isinstance(d, tvm.tirx.IntImm) for d in call.ty.shape.values)
        )

    def emit_resize(self, data, layout: str, out_hw: tuple[int, int], mode: str, appended=()):
        in_shape = tuple(int(d) for d in data.ty.shape.values)
        in_h, in_w = (in_shape[2], in_shape[3]) if layout == "NCHW" else (in_shape[1], in_shape[2])
        appended_channels = tuple(int(t.ty.shape[3]) for t in appended)
        key = (in_shape, out_hw, layout, appended_channels)
        if key not in self.kernels:
            name = f"tap_resize_{len(self.kernels)}"
            # Private (no global_symbol): dead-code elimination drops a kernel whose call was turned around.
            kernel = tap_resize_kernel(in_shape, out_hw, layout, "float32", appended_channels)
            self.kernels[key] = self.builder_.add_func(kernel.without_attr("global_symbol"), name)
        rows = axis_taps(out_hw[0], in_h, mode)
        cols = axis_taps(out_hw[1], in_w, mode)
        n, c = in_shape[0], in_shape[1] if layout == "NCHW" else in_shape[3] + sum(appended_channels)
        out_shape = (n, c, *out_hw) if layout == "NCHW" else (n, *out_hw, c)
        tables = [relax.const(t) for t in (*rows, *cols)]
        return relax.call_tir(
            self.kernels[key], [data, *tables, *appended], relax.TensorType(out_shape, "float32")
        )

    def concatenated_resize(self, original):
        """(resize, appended tensors) if ``original`` is ``concat([resize_nhwc(x), *others], axis=3)``, the
        resize used only there and every part a whole number of vectors of channels; else None."""
        if not is_call(original, "relax.concat") or not isinstance(original.args[0], relax.Tuple):
            return None
        parts = list(original.args[0].fields)
        resize = self.bindings.get(parts[0])
        if (
            len(parts) < 2
            or int(original.attrs.axis) not in (3, -1)
            or resize is None
            or self.uses.get(parts[0], 0) != 1
            or not self.supported(resize)
            or str(resize.attrs.layout) != "NHWC"
        ):
            return None
        channels = [int(p.ty.shape[3]) for p in parts if len(p.ty.shape) == 4]
        if len(channels) != len(parts) or any(ch % _VECTOR_CHANNELS for ch in channels):
            return None
        if any(str(p.ty.dtype) != "float32" for p in parts[1:]):
            return None
        return resize, [self.visit_expr(p) for p in parts[1:]]

    def visit_call_(self, call):
        original = call
        call = super().visit_call_(call)
        if is_call(call, "relax.permute_dims") and [int(a) for a in call.attrs.axes or []] == _TO_NCHW:
            # permute_dims(resize_nhwc(x)) -> resize_nchw(permute_dims(x)): transpose before upsampling.
            resize = self.bindings.get(original.args[0])
            if (
                resize is not None
                and self.uses.get(original.args[0], 0) == 1
                and self.supported(resize)
                and str(resize.attrs.layout) == "NHWC"
            ):
                small = self.builder_.emit(relax.op.permute_dims(self.visit_expr(resize.args[0]), _TO_NCHW))
                return self.emit_resize(small, "NCHW", _out_hw(resize), _mode(resize))
            return call
        fused = self.concatenated_resize(original)
        if fused is not None:
            # concat([resize(x), y], channels): the resize writes its channels straight into the
            # concatenated output and copies the others, instead of a full-size resize output copied again.
            resize, appended = fused
            return self.emit_resize(
                self.visit_expr(resize.args[0]), "NHWC", _out_hw(resize), _mode(resize), appended
            )
        if self.supported(call):
            return self.emit_resize(call.args[0], str(call.attrs.layout), _out_hw(call), _mode(call))
        return call


def _out_hw(resize) -> tuple[int, int]:
    dims = [int(d) for d in resize.ty.shape.values]
    return (dims[2], dims[3]) if str(resize.attrs.layout) == "NCHW" else (dims[1], dims[2])


def _mode(resize) -> str:
    return str(resize.attrs.coordinate_transformation_mode)


def _bindings_and_uses(func: relax.Function) -> tuple[dict, dict]:
    """Each dataflow var's bound value, and how many expressions use it (the unused resize of a
    turned-around pair is dropped by dead-code elimination; a second use keeps it, correct either way)."""
    bindings = {binding.var: binding.value for block in func.body.blocks for binding in block.bindings}
    return bindings, use_counts(func)


def ResizeToTapTables() -> tvm.transform.Pass:  # noqa: N802 (a pass, named like TVM's)
    """Replace float linear ``resize2d`` (NCHW or NHWC) with the tap-table kernel."""

    @tvm.transform.module_pass(opt_level=0, name="ResizeToTapTables")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for gvar, func in list(mod.functions.items()):
            if not isinstance(func, relax.Function):
                continue
            rewriter = _ResizeRewriter(mod, *_bindings_and_uses(func))
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
            mod = relax.transform.DeadCodeElimination()(rewriter.builder_.get())
        return mod

    return _pass
