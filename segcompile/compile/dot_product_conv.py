"""int8 convolutions on x86 VNNI dot-product instructions (``vpdpbusd``: 64 u8 x s8 products per instruction).

TVM 0.27 has no x86 schedules for quantized convolutions, and the legalized ``conv2d(int8, int8) -> int32``
runs one widened multiply-add per output element per tap. With VNNI, one instruction adds four products
into each of 16 int32 lanes: for an NHWC convolution, the lanes are 16 output channels of one pixel, the
four products are four consecutive input channels of that pixel, and the weights are packed once, at
compile time, as ``[C_out/16, KH, KW, C_in/4, 16, 4]``.

``vpdpbusd`` multiplies *unsigned* bytes by signed bytes, and our activations are signed int8, so the
kernel shifts the input by +128 on the way in (``x + 128`` fits a uint8) and removes the shift exactly
afterwards: ``sum((x + 128) * w) - 128 * sum(w)``; the second term is a per-channel constant. The result is
bit-identical to ``conv2d(..., out_dtype="int32")``, so nothing downstream changes.

Three pieces, each used by one pipeline stage:
- :func:`rewrite_int8_convolutions`: the Relax pass (runs after the NHWC layout conversion) replacing every
  channels-last int8 conv2d with a call to the kernel below, weights already packed;
- :func:`dot_product_conv2d`: that kernel (TE), marked fusable so the requantize chain after it fuses in;
- :func:`schedule_dot_product_conv`: its schedule inside the fused kernel (register-blocked pixels x output
  channels, VNNI tensorized), called by cpu_schedules.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segcompile.compile.conv_shapes import conv_output_hw

# Block names of the kernel; the fused kernel keeps them as prefixes (FuseTIR may add a suffix).
PACK_BLOCK = "dot_pack"
CONV_BLOCK = "dot_conv"
INTRIN_NAME = "segcompile_vnni_dot_16x4"
LANES, GROUP = 16, 4  # int32 lanes of one zmm register; bytes summed into each lane
# Relax's kOutEWiseFusable: elementwise consumers (bias, requantize) fuse into the kernel's output.
_OUT_ELEMWISE_FUSABLE = 4
# Register blocking: pixels x 16-channel groups of accumulators (AVX-512 has 32 zmm registers).
_PIXEL_TILES = (8, 7, 6, 5, 4, 3, 2, 1)
_CHANNEL_GROUP_TILES = (3, 2, 1)
_MAX_ACCUMULATORS = 24


def supports_vnni(target) -> bool:
    """Whether ``target`` (an LLVM x86 target) has the AVX-512 VNNI dot-product instruction."""
    from tvm.target import codegen

    if str(target.kind.name) != "llvm" or not str(target.attrs.get("mtriple", "")).startswith("x86_64"):
        return False
    try:
        return bool(codegen.llvm_cpu_has_features(["avx512vnni"], target))
    except Exception:  # an unknown CPU name: no features we can rely on
        return False


def register_intrinsic() -> str:
    """Register (once) the 16x4 u8*s8->i32 dot-product tensor intrinsic and return its name.

    TVM ships one (``tvm.s_tir.tensor_intrin.x86.VNNI_DOT_16x4_INTRIN``), but it calls
    ``llvm.x86.avx512.vpdpbusd.512`` with the <16 x i32> operands of older LLVMs; the LLVM inside
    TVM 0.27 declares <64 x i8> operands and rejects the call. Same description, corrected call. (Importing
    ``tvm.s_tir.tensor_intrin`` at all would also parse every GPU intrinsic: half a minute.)
    """
    from tvm import s_tir
    from tvm.script import tirx as T

    try:
        s_tir.TensorIntrin.get(INTRIN_NAME)
        return INTRIN_NAME
    except Exception:  # not registered yet (TensorIntrin.get raises)
        pass

    @T.prim_func(s_tir=True)
    def dot_16x4(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def vnni_dot(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_word = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a_bytes = T.reinterpret(T.broadcast(a_word, 16), dtype="int8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                a_bytes,
                B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16",
            )

    s_tir.TensorIntrin.register(INTRIN_NAME, dot_16x4, vnni_dot)
    return INTRIN_NAME


@dataclass(frozen=True)
class ConvGeometry:
    """Shape and attributes of one channels-last convolution (data NHWC, weight OHWI)."""

    data_shape: tuple[int, int, int, int]
    data_dtype: str  # int8 (shifted by +128 in the kernel) or uint8 (used as it is)
    out_channels: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        n, h, w, _ = self.data_shape
        out_h, out_w = conv_output_hw((h, w), self.kernel, self.strides, self.padding, self.dilation)
        return n, out_h, out_w, self.out_channels

    @property
    def padded_in_channels(self) -> int:
        return -(-self.data_shape[3] // GROUP) * GROUP

    @property
    def padded_out_channels(self) -> int:
        return -(-self.out_channels // LANES) * LANES


def pack_weight(weight_ohwi: np.ndarray, geometry: ConvGeometry) -> tuple[np.ndarray, np.ndarray]:
    """OHWI int8 weights as ``[C_out/16, KH, KW, C_in/4, 16, 4]`` (zero-padded), and the per-channel
    int32 correction ``zero_shift * sum(w)`` the kernel subtracts (0 for uint8 input)."""
    out_c, kh, kw, in_c = weight_ohwi.shape
    cop, cip = geometry.padded_out_channels, geometry.padded_in_channels
    padded = np.zeros((cop, kh, kw, cip), np.int8)
    padded[:out_c, :, :, :in_c] = weight_ohwi
    packed = padded.reshape(cop // LANES, LANES, kh, kw, cip // GROUP, GROUP).transpose(0, 2, 3, 4, 1, 5)
    shift = 128 if geometry.data_dtype == "int8" else 0
    correction = shift * weight_ohwi.reshape(out_c, -1).astype(np.int64).sum(axis=1)
    return np.ascontiguousarray(packed), correction.astype(np.int32)


def dot_product_conv2d(geometry: ConvGeometry):
    """The kernel ``(data, packed_weight, correction) -> int32 NHWC``, equal to conv2d(out_dtype=int32)."""
    from tvm import te, tirx

    n, h, w, in_c = geometry.data_shape
    _, out_h, out_w, out_c = geometry.out_shape
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel, geometry.strides, geometry.dilation
    top, left, bottom, right = geometry.padding
    cip, cop = geometry.padded_in_channels, geometry.padded_out_channels
    shift = 128 if geometry.data_dtype == "int8" else 0

    def shape(*dims: int) -> list:
        # int64 extents, like every legalized Relax kernel: FuseTIR merges buffers only of one index type.
        return [tirx.IntImm("int64", d) for d in dims]

    data = te.placeholder(shape(n, h, w, in_c), geometry.data_dtype, "data")
    weight = te.placeholder(shape(cop // LANES, kh, kw, cip // GROUP, LANES, GROUP), "int8", "packed_weight")
    correction = te.placeholder(shape(out_c), "int32", "correction")

    def packed_input(b, y, x, c):
        inside = tirx.all(y >= top, y < h + top, x >= left, x < w + left, c < in_c)
        value = data[
            b,
            tirx.min(tirx.max(y - top, 0), h - 1),
            tirx.min(tirx.max(x - left, 0), w - 1),
            tirx.min(c, in_c - 1),
        ]
        # Padding (spatial and the extra input channels) holds the shifted zero.
        return tirx.if_then_else(
            inside, (value.astype("int32") + shift).astype("uint8"), tirx.const(shift, "uint8")
        )

    shifted = te.compute(shape(n, h + top + bottom, w + left + right, cip), packed_input, name=PACK_BLOCK)
    rkh, rkw, rco, rci = (
        te.reduce_axis((tirx.IntImm("int64", 0), extent), name)
        for extent, name in zip(shape(kh, kw, cip // GROUP, GROUP), ("rkh", "rkw", "rco", "rci"), strict=True)
    )
    conv = te.compute(
        shape(n, out_h, out_w, cop // LANES, LANES),
        lambda b, y, x, co, ci: te.sum(
            shifted[b, y * sh + rkh * dh, x * sw + rkw * dw, rco * GROUP + rci].astype("int32")
            * weight[co, rkh, rkw, rco, ci, rci].astype("int32"),
            axis=[rkh, rkw, rco, rci],
        ),
        name=CONV_BLOCK,
    )
    out = te.compute(
        shape(n, out_h, out_w, out_c),
        lambda b, y, x, c: conv[b, y, x, c // LANES, c % LANES] - correction[c],
        name="dot_unpack",
    )
    func = te.create_prim_func([data, weight, correction, out])
    return func.with_attr("op_pattern", _OUT_ELEMWISE_FUSABLE)


def rewrite_int8_convolutions():
    """Relax pass: every channels-last ``conv2d(int8|uint8, const int8 weight) -> int32`` with groups=1
    becomes a call to :func:`dot_product_conv2d` (other convolutions are left as they are)."""
    import tvm
    from tvm import relax

    from segcompile.compile.passes.relax_exprs import constant_through_permutes, is_call

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.kernels: dict[ConvGeometry, object] = {}

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not is_call(call, "relax.nn.conv2d"):
                return call
            attrs = call.attrs
            data_info = call.args[0].ty
            if (
                attrs.data_layout != "NHWC"
                or sorted(str(attrs.kernel_layout)) != sorted("OHWI")
                or attrs.out_layout != "NHWC"
                or int(attrs.groups) != 1
                or str(attrs.out_dtype) != "int32"
                or str(data_info.dtype) not in ("int8", "uint8")
            ):
                return call
            weight = constant_through_permutes(call.args[1], self.lookup_binding)
            if weight is None or weight.dtype != np.int8:
                return call
            layout = str(attrs.kernel_layout)
            weight = np.transpose(weight, [layout.index(axis) for axis in "OHWI"])
            geometry = ConvGeometry(
                data_shape=tuple(int(d) for d in data_info.shape),
                data_dtype=str(data_info.dtype),
                out_channels=int(weight.shape[0]),
                kernel=(int(weight.shape[1]), int(weight.shape[2])),
                strides=tuple(int(s) for s in attrs.strides),
                padding=tuple(int(p) for p in attrs.padding),
                dilation=tuple(int(d) for d in attrs.dilation),
            )
            if geometry not in self.kernels:
                name = f"dot_product_conv2d_{len(self.kernels)}"
                kernel = dot_product_conv2d(geometry).without_attr("global_symbol")  # private
                self.kernels[geometry] = self.builder_.add_func(kernel, name)
            packed, correction = pack_weight(weight, geometry)
            return relax.call_tir(
                self.kernels[geometry],
                [call.args[0], relax.const(packed, "int8"), relax.const(correction, "int32")],
                relax.TensorType(geometry.out_shape, "int32"),
            )

    @tvm.transform.module_pass(opt_level=0, name="RewriteInt8ConvolutionsToDotProduct")
    def _pass(mod, _ctx):
        rewriter = _Rewriter(mod)
        for gvar, func in mod.functions.items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return _pass


def schedule_dot_product_conv(sch, conv_name: str, output_name: str) -> None:
    """Schedule the dot-product convolution ``conv_name`` of a fused kernel whose output block is
    ``output_name`` (its elementwise chain already inlined into that block).

    Loops: fused (batch, row) parallel | pixel tiles | output-channel-group tiles | taps, input-channel
    groups | pixels x channel groups (unrolled register block) | 16 lanes x 4 bytes (one vpdpbusd).
    The epilogue (unpack, bias, requantize) runs on each register block while it is in cache.
    """
    from segcompile.compile.cpu_schedules import compute_padding_per_row

    intrinsic = register_intrinsic()
    block = sch.get_sblock(conv_name)
    batch, row, col, group, lane, *reduce = sch.get_loops(block)
    width = int(sch.get(col).extent)
    groups = int(sch.get(group).extent)
    group_tile = next(t for t in _CHANNEL_GROUP_TILES if groups % t == 0)
    pixel_tile = next(t for t in _PIXEL_TILES if width % t == 0 and t * group_tile <= _MAX_ACCUMULATORS)
    col_outer, col_inner = sch.split(col, [None, pixel_tile])
    group_outer, group_inner = sch.split(group, [None, group_tile])
    sch.reorder(batch, row, col_outer, group_outer, *reduce[:-1], col_inner, group_inner, lane, reduce[-1])
    accumulators = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(accumulators, group_outer)
    if output_name != conv_name:
        sch.reverse_compute_at(sch.get_sblock(output_name), group_outer)
    rows = sch.fuse(batch, row)
    sch.parallel(rows)
    compute_padding_per_row(sch, block, rows)
    init = sch.decompose_reduction(block, reduce[0])
    sch.tensorize(lane, intrinsic)
    sch.unroll(col_inner)
    sch.unroll(group_inner)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(accumulators)[-1])
    if output_name != conv_name:
        channel = sch.get_loops(sch.get_sblock(output_name))[-1]
        extent = int(sch.get(channel).extent)
        if extent > LANES and extent % LANES == 0:
            channel = sch.split(channel, [None, LANES])[1]
        sch.vectorize(channel)
