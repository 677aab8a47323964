"""Hand-written CPU schedules for the fused kernels of the integer (and float) programs.

Legalized Relax kernels are naive loop nests: every elementwise step of a fused kernel (bias add, int64
fixed-point multiply, rounding shift, clip, cast) writes a full intermediate buffer, and the convolution
runs one scalar multiply-add at a time. DLight has no CPU rules for convolutions, and MetaSchedule tuning
costs minutes per kernel, so every kernel the tuning database does not cover gets this schedule:

- inline every elementwise block into its consumer (one pass over memory instead of ten);
- channels-last convolutions (x86, see tuning.layout_passes): a register block of a few pixels x a few
  vectors of output channels accumulates in a local buffer, the fused epilogue follows each block, the
  padding of the rows a row of output needs is computed inside that row's (parallel) loop;
- VNNI dot-product convolutions: dot_product_conv.schedule_dot_product_conv;
- depthwise + 1x1 kernels: depthwise_pointwise.schedule_depthwise_pointwise (the 1x1 tiled as above,
  the depthwise values of each pixel tile computed inside it);
- NCHW reductions (aarch64/armv7 conv2d, depthwise conv, pooling): tile the output channels (unrolled,
  register blocking) and the output width (vectorized: NEON), reduction loops in between, the outer
  spatial loops fused and run in parallel;
- other blocks: outer loops fused and parallel, innermost vectorized.

Only loop structure changes, never the arithmetic of a value: integer kernels stay bit-identical to the
unscheduled build (integer sums are exact in any order). Each step is tried on a copy of the schedule and
dropped if TVM rejects it, so a kernel this does not fit keeps its default (correct) loop nest.
"""

from __future__ import annotations

from collections.abc import Callable

from segcompile.compile.depthwise_pointwise import (
    ACTIVATION_BLOCK,
    POINTWISE_BLOCK,
    schedule_depthwise_pointwise,
)
from segcompile.compile.dot_product_conv import CONV_BLOCK, PACK_BLOCK, schedule_dot_product_conv
from segcompile.compile.passes.resize_tap_tables import COLUMNS_BLOCK, schedule_tap_resize

# IterVar.iter_type values of TIR blocks.
_SPATIAL, _REDUCE = 0, 2
# tirx.ForKind.PARALLEL
_PARALLEL = 1
# Vector width candidates along the output width and register-block sizes along output channels.
_WIDTH_TILES = (16, 8, 4)
_CHANNEL_TILES = (8, 4, 2)
# Channels-last register blocks: pixels along a row x vectors of output channels (<= 24 accumulators).
# One vector of channels by up to 8 pixels measured fastest on MobileNetV2 + DeepLabV3Lite (Zen 4,
# interleaved with onnxruntime: 512x512 float 1.13x vs 1.22x for up to 3 vectors, demo 0.92x vs 0.97x).
_PIXEL_TILES = (8, 7, 6, 5, 4, 3, 2, 1)
_CHANNEL_VECTOR_TILES = (1,)
# ...except with few inputs per output (a 1x1 expand from 16-32 channels, the 3-channel stem): each
# broadcast input value then feeds several vectors of outputs. Measured on the same model: 0.955x vs
# 0.973x onnxruntime with up to 3 vectors where a reduction has at most 32 terms.
_FEW_TERMS = 32
_FEW_TERMS_VECTOR_TILES = (3, 2, 1)
_MAX_ACCUMULATORS = 24
# Input rows one output row may pad for itself (3x3 at stride 2 needs 3).
_MAX_PADDED_ROWS_PER_ROW = 4
# Set on a kernel this module scheduled (MetaSchedule's ApplyDatabase marks its own with tirx.is_scheduled).
SCHEDULED_ATTR = "segcompile.hand_scheduled"


def schedule_kernel(func):
    """A scheduled copy of one legalized TIR kernel (``tirx.PrimFunc``); unchanged where nothing applies."""
    import tvm
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
    for name in _block_names(sch):
        block = sch.get_sblock(name)
        # Padding stays a block of its own: inlined, it puts a bounds check into the innermost conv loop.
        if (
            name in outputs
            or _is_reduction(sch, block)
            or name.startswith(("pad", PACK_BLOCK, COLUMNS_BLOCK, ACTIVATION_BLOCK))
        ):
            continue
        sch = _attempt(sch, lambda s, n=name: s.compute_inline(s.get_sblock(n)))
    resize_columns = [name for name in _block_names(sch) if name.startswith(COLUMNS_BLOCK)]
    if resize_columns:
        schedule_tap_resize(sch, resize_columns[0])
        return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)
    dot_convs = [name for name in _block_names(sch) if name.startswith(CONV_BLOCK)]
    if len(dot_convs) == 1 and len(outputs) == 1:
        # A VNNI convolution (dot_product_conv.py) has a schedule of its own; it must apply (tensorize
        # cannot be half-done), so a failure here is an error, not a fallback.
        schedule_dot_product_conv(sch, dot_convs[0], next(iter(outputs)))
        return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)
    pointwise = [name for name in _block_names(sch) if name.startswith(POINTWISE_BLOCK)]
    if len(pointwise) == 1 and len(outputs) == 1:
        # A depthwise + 1x1 kernel (depthwise_pointwise.py): scheduled as a whole, or not at all (its
        # blocks tiled one by one would lose what fusing them was for), so a failure is an error.
        schedule_depthwise_pointwise(sch, pointwise[0])
        return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)
    for name in _block_names(sch):
        if name in outputs and _is_reduction(sch, sch.get_sblock(name)):
            # A reduction writing the function's output is given a buffer of its own (copied out by a
            # parallel, vectorized loop), so it is tiled the same way as a fused kernel's reduction.
            sch = _attempt(sch, lambda s, n=name: s.cache_write(s.get_sblock(n), 0, "global"))
    for name in _block_names(sch):
        if _is_reduction(sch, sch.get_sblock(name)):
            sch = _attempt(sch, lambda s, n=name: _tile_reduction(s, n))
        else:
            sch = _attempt(sch, lambda s, n=name: _parallel_vector(s, n))
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


def schedule_module_pass():
    """A module pass scheduling every TIR kernel not already scheduled (by a tuning database or by us)."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="SegcompileCpuSchedules")
    def _pass(mod, _ctx):
        updates = {}
        for gvar, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc) or _already_scheduled(func):
                continue
            updates[gvar] = schedule_kernel(func)
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return _pass


def _already_scheduled(func) -> bool:
    attrs = func.attrs or {}
    return any(key in attrs for key in ("tirx.is_scheduled", "tir.is_scheduled", SCHEDULED_ATTR))


def _block_names(sch) -> list[str]:
    return [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]


def _is_reduction(sch, block) -> bool:
    return any(int(iv.iter_type) == _REDUCE for iv in sch.get(block).iter_vars)


def _attempt(sch, step: Callable) -> object:
    """``step`` applied to a copy of ``sch``; the original when TVM rejects the step."""
    trial = sch.copy()
    try:
        step(trial)
    except Exception:  # a ScheduleError (or TVMError) means: this primitive does not fit this kernel
        return sch
    return trial


def _loops_by_kind(sch, name: str) -> tuple[list, list] | None:
    """(spatial loops, reduction loops) of an unscheduled block (loop i binds iter var i), or None."""
    block = sch.get_sblock(name)
    loops = sch.get_loops(block)
    iters = sch.get(block).iter_vars
    if len(loops) != len(iters):
        return None
    spatial = [lp for lp, iv in zip(loops, iters, strict=True) if int(iv.iter_type) == _SPATIAL]
    reduce = [lp for lp, iv in zip(loops, iters, strict=True) if int(iv.iter_type) == _REDUCE]
    return spatial, reduce


def _factor(sch, loop, candidates: tuple[int, ...]) -> int | None:
    extent = int(sch.get(loop).extent)
    return next((c for c in candidates if extent % c == 0 and extent > c), None)


def _tile_reduction(sch, name: str) -> None:
    split = _loops_by_kind(sch, name)
    if split is None:
        raise ValueError(f"{name}: already transformed")
    spatial, reduce = split
    if len(spatial) == 4 and reduce and "nhwc" in name:
        tile_channels_last(sch, name)
    elif len(spatial) == 4 and reduce:
        # NCHW conv/pool: n, channel, height, width -> n, c_o, h, w_o | reduce | c_i (unrolled), w_i (vector)
        batch, channel, height, width = spatial
        width_tile = _factor(sch, width, _WIDTH_TILES)
        channel_tile = _factor(sch, channel, _CHANNEL_TILES)
        if width_tile:
            width_outer, width_inner = sch.split(width, [None, width_tile])
        elif int(sch.get(width).extent) <= _WIDTH_TILES[0]:
            # A narrow row (e.g. 10 at stride 16) is one vector as it is.
            width_outer, width_inner = None, width
        else:
            width_outer, width_inner = width, None
        channel_outer, channel_inner = (
            sch.split(channel, [None, channel_tile]) if channel_tile else (channel, None)
        )
        inner = [lp for lp in (channel_inner, width_inner) if lp is not None]
        outer = [lp for lp in (batch, channel_outer, height, width_outer) if lp is not None]
        sch.reorder(*outer, *reduce, *inner)
        # parallel() and vectorize() need the block still a reduction (with its init): they check for
        # compact dataflow, which the update block alone no longer has once the init is split off.
        sch.parallel(sch.fuse(batch, channel_outer, height))
        if channel_inner is not None:
            sch.unroll(channel_inner)
        if width_inner is not None:
            sch.vectorize(width_inner)
        sch.decompose_reduction(sch.get_sblock(name), reduce[0])
    elif len(spatial) >= 2 and reduce:
        sch.reorder(*spatial[:-1], *reduce, spatial[-1])
        sch.parallel(sch.fuse(*spatial[:2]) if len(spatial) > 2 else spatial[0])
        _vectorize_inner(sch, spatial[-1])
        sch.decompose_reduction(sch.get_sblock(name), reduce[0])
    else:
        raise ValueError(f"{name}: no spatial loops to parallelize")


def tile_channels_last(sch, name: str) -> None:
    """NHWC conv (HWIO weights): output channels are the vector lanes (the weights of one tap and input
    channel are contiguous over them), a row segment of pixels x a few vectors of channels is the
    register block, and the fused epilogue (bias, activation, requantize) runs on each block while it is
    still in cache. n, h (parallel) | w_o, c_oo | taps, input channels | w_i (unrolled), c_oi (unrolled),
    c_v (vector). The block ``name`` must be untransformed (each loop binding one iteration variable).
    """
    split = _loops_by_kind(sch, name)
    if split is None or len(split[0]) != 4:
        raise ValueError(f"{name}: not an untransformed n, h, w, c reduction")
    (batch, row, col, channel), reduce = split
    lanes = _factor(sch, channel, _WIDTH_TILES) or int(sch.get(channel).extent)
    channel_outer, channel_lanes = sch.split(channel, [None, lanes])
    vectors = int(sch.get(channel_outer).extent)
    terms = 1
    for loop in reduce:
        terms *= int(sch.get(loop).extent)
    # (Not depthwise, whose input channel loop has one term: there an input feeds one output channel.)
    shared_inputs = int(sch.get(reduce[-1]).extent) > 1
    vector_tiles = _FEW_TERMS_VECTOR_TILES if shared_inputs and terms <= _FEW_TERMS else _CHANNEL_VECTOR_TILES
    vector_tile = next(t for t in vector_tiles if vectors % t == 0)
    channel_outer, channel_block = sch.split(channel_outer, [None, vector_tile])
    width = int(sch.get(col).extent)
    pixel_tile = next(t for t in _PIXEL_TILES if width % t == 0 and t * vector_tile <= _MAX_ACCUMULATORS)
    col_outer, col_inner = sch.split(col, [None, pixel_tile])
    block = sch.get_sblock(name)
    padding = [p for p in sch.get_producers(block) if sch.get(p).name_hint.startswith("pad")]
    sch.reorder(batch, row, col_outer, channel_outer, *reduce, col_inner, channel_block, channel_lanes)
    # The register block accumulates in a "local" buffer: LLVM gets a small stack array it can keep in
    # registers (a "global" tile over 1 KiB would be a heap workspace, loaded and stored every tap).
    accumulators = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(accumulators, channel_outer)
    _vectorize_inner(sch, sch.get_loops(accumulators)[-1])
    consumers = sch.get_consumers(accumulators)
    if len(consumers) == 1:
        # The epilogue block follows each register block instead of a second pass over the whole output.
        consumer = consumers[0]
        try:
            sch.reverse_compute_at(consumer, channel_outer)
            epilogue = sch.get_loops(consumer)[-1]
            extent = int(sch.get(epilogue).extent)
            if extent > lanes and extent % lanes == 0:
                epilogue = sch.split(epilogue, [None, lanes])[1]
            sch.vectorize(epilogue)
        except Exception:  # a consumer this loop cannot host keeps its own pass (scheduled below)
            pass
    rows = sch.fuse(batch, row)
    sch.parallel(rows)
    for pad in padding:
        if _is_copy(sch, pad):
            sch.compute_inline(pad)  # a 1x1 convolution's pad_temp pads nothing: read the input itself
        else:
            compute_padding_at(sch, pad, rows)
    sch.unroll(col_inner)
    sch.unroll(channel_block)
    sch.vectorize(channel_lanes)
    sch.decompose_reduction(block, reduce[0])


def _is_copy(sch, block) -> bool:
    """Whether a padding block pads nothing (its value is a plain load)."""
    import tvm
    from tvm import tirx

    body = sch.get(block).body
    # TVM 0.27's buffer loads are tvm.ir.expr.TensorLoad (tirx.BufferLoad is a constructor function).
    return isinstance(body, tirx.BufferStore) and isinstance(body.value, tvm.ir.expr.TensorLoad)


def compute_padding_per_row(sch, block, rows) -> None:
    """Pad (or pack) the input rows one output row needs inside the ``rows`` loop: a few rows stay in
    cache, where padding the whole input first writes and re-reads a full copy of the activation."""
    for producer in sch.get_producers(block):
        if sch.get(producer).name_hint.startswith(("pad", PACK_BLOCK)):
            compute_padding_at(sch, producer, rows)


def compute_padding_at(sch, producer, loop) -> None:
    """compute_at ``producer`` (a padding block) under ``loop``, unless that recomputes too many rows."""
    # A dilated kernel (ASPP: dilation 12-18) needs dozens of input rows per output row: padding
    # them again for every row would cost more than padding the input once.
    trial = sch.copy()  # random variables (blocks, loops) stay valid in a copy
    trial.compute_at(producer, loop)
    rows_per_row = int(trial.get(trial.get_loops(producer)[1]).extent)
    if rows_per_row > _MAX_PADDED_ROWS_PER_ROW:
        return
    sch.compute_at(producer, loop)
    innermost = sch.get_loops(producer)[-1]
    extent = int(sch.get(innermost).extent)
    if extent > _WIDTH_TILES[0] and extent % _WIDTH_TILES[0] == 0:
        innermost = sch.split(innermost, [None, _WIDTH_TILES[0]])[1]
    sch.vectorize(innermost)


def _parallel_vector(sch, name: str) -> None:
    loops = sch.get_loops(sch.get_sblock(name))
    if any(int(sch.get(loop).kind) == _PARALLEL for loop in loops):
        return  # placed inside a scheduled kernel's parallel loop already (padding, epilogue)
    if len(loops) >= 3:
        sch.parallel(sch.fuse(*loops[:2]))
    elif len(loops) == 2:
        sch.parallel(loops[0])
    if loops:
        _vectorize_inner(sch, loops[-1])


def vectorize_loop(sch, loop) -> None:
    """Vectorize ``loop`` in chunks of a vector's width (a whole long loop would be one huge vector)."""
    _vectorize_inner(sch, loop)


def _vectorize_inner(sch, loop) -> None:
    """Vectorize ``loop`` in chunks of a vector's width (a whole long loop would be one huge vector)."""
    extent = int(sch.get(loop).extent)
    if extent <= _WIDTH_TILES[0]:
        sch.vectorize(loop)
        return
    factor = _factor(sch, loop, _WIDTH_TILES)
    if factor is not None:
        sch.vectorize(sch.split(loop, [None, factor])[1])
