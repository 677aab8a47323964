"""int8 convolutions on VNNI dot products and the channels-last CPU pipeline (issue 6).

The VNNI kernel must compute exactly what ``conv2d(int8, int8) -> int32`` computes, for every geometry the
networks use (1x1, 3x3 with padding, stride 2, dilation, input channels not a multiple of 4, output
channels not a multiple of 16, int8 and uint8 activations), and the rewrite must really happen: each test
checks that the compiled program calls the dot-product kernel. They need a CPU with AVX-512 VNNI (the
machines this project runs on have it); elsewhere they are skipped with that reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from compile_nets import INPUT_SHAPE, qdq_model  # noqa: E402

PORTABLE = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"}


def _native_target():
    import tvm

    from segcompile.compile.targets import resolve_mcpu

    return tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": resolve_mcpu("native")})


def _require_vnni():
    from segcompile.compile.dot_product_conv import supports_vnni

    if not supports_vnni(_native_target()):
        pytest.skip("this CPU has no AVX-512 VNNI")


def _conv_module(shape_nchw, weight_oihw, dtype, strides, padding, dilation):
    """``main(x) = conv2d(x, const weight, out_dtype=int32)`` in NCHW, as the integer lowering emits it."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape_nchw, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(
                relax.op.nn.conv2d(
                    x,
                    relax.const(weight_oihw, "int8"),
                    strides=strides,
                    padding=padding,
                    dilation=dilation,
                    out_dtype="int32",
                )
            )
        bb.emit_func_output(out)
    return bb.get()


def _reference_conv(x, w, strides, padding, dilation) -> np.ndarray:
    """Direct int64 convolution in numpy (NCHW / OIHW)."""
    top, left, bottom, right = padding
    x = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_c, _, kh, kw = w.shape
    (sh, sw), (dh, dw) = strides, dilation
    out_h = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((x.shape[0], out_c, out_h, out_w), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i * dh : i * dh + sh * out_h : sh, j * dw : j * dw + sw * out_w : sw]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.int64))
    return out


def _compile_and_run(mod, target, data: np.ndarray):
    import tvm
    from tvm import relax

    from segcompile.compile.tuning import compile_tuned, legalize

    legal = legalize(mod, target)
    kernels = [gv.name_hint for gv in legal.functions if "dot_product_conv2d" in gv.name_hint]
    executable = compile_tuned(mod, target)
    out = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()
    return out, kernels


GEOMETRIES = {
    # name: (N, C_in, H, W), C_out, kernel, strides, padding, dilation, dtype
    "1x1": ((1, 32, 8, 16), 48, 1, (1, 1), (0, 0, 0, 0), (1, 1), "int8"),
    "3x3-pad": ((1, 16, 10, 12), 32, 3, (1, 1), (1, 1, 1, 1), (1, 1), "int8"),
    "3x3-stride2-rgb": ((1, 3, 16, 20), 16, 3, (2, 2), (1, 1, 1, 1), (1, 1), "int8"),
    "dilated-aspp": ((1, 24, 12, 14), 21, 3, (1, 1), (3, 3, 3, 3), (3, 3), "int8"),
    "odd-channels-uint8": ((1, 6, 7, 9), 19, 1, (1, 1), (0, 0, 0, 0), (1, 1), "uint8"),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_vnni_convolution_equals_the_integer_convolution_exactly(name):
    _require_vnni()
    shape, out_c, k, strides, padding, dilation, dtype = GEOMETRIES[name]
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, shape).astype(dtype)
    w = rng.integers(-127, 128, (out_c, shape[1], k, k)).astype(np.int8)
    mod = _conv_module(shape, w, dtype, strides, padding, dilation)
    out, kernels = _compile_and_run(mod, _native_target(), x)
    assert kernels, "the int8 conv2d was not rewritten to the dot-product kernel"
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, _reference_conv(x, w, strides, padding, dilation))


def test_integer_program_is_bit_identical_with_and_without_vnni(tmp_path):
    """A whole lowered QDQ network (requantize chains fused into the dot-product kernels) computes the
    same int8 logits as the portable x86-64 build, which has no dot-product kernels."""
    _require_vnni()
    import tvm

    from segcompile.compile import import_qdq, lower_to_integer

    qdq_model(tmp_path / "int8.qdq.onnx", with_softmax=False)
    mod, _ = lower_to_integer(import_qdq(tmp_path / "int8.qdq.onnx"))
    data = np.random.default_rng(3).standard_normal(INPUT_SHAPE).astype(np.float32) * 3
    fast, kernels = _compile_and_run(mod, _native_target(), data)
    portable, portable_kernels = _compile_and_run(mod, tvm.target.Target(PORTABLE), data)
    assert kernels and not portable_kernels
    np.testing.assert_array_equal(fast, portable)


@pytest.mark.parametrize(
    ("mcpu", "expected"), [("x86-64", False), ("haswell", False), ("icelake-server", True), ("znver4", True)]
)
def test_vnni_is_detected_from_the_target_cpu(mcpu, expected):
    import tvm

    from segcompile.compile.dot_product_conv import supports_vnni

    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})
    assert supports_vnni(target) is expected


def test_arm_targets_get_no_x86_layout_passes():
    import tvm

    from segcompile.compile.tuning import layout_passes

    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"})
    assert layout_passes(arm) == []


def test_packed_weights_keep_every_weight_and_pad_with_zeros():
    from segcompile.compile.dot_product_conv import ConvGeometry, pack_weight

    rng = np.random.default_rng(1)
    weight = rng.integers(-127, 128, (19, 3, 3, 6)).astype(np.int8)  # OHWI
    geometry = ConvGeometry((1, 9, 9, 6), "int8", 19, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    packed, correction = pack_weight(weight, geometry)
    assert packed.shape == (2, 3, 3, 2, 16, 4)
    # [C_out/16, KH, KW, C_in/4, 16, 4] -> OHWI, padding dropped.
    unpacked = packed.transpose(0, 4, 1, 2, 3, 5).reshape(32, 3, 3, 8)
    np.testing.assert_array_equal(unpacked[:19, :, :, :6], weight)
    assert not unpacked[19:].any() and not unpacked[:, :, :, 6:].any()
    np.testing.assert_array_equal(correction, 128 * weight.reshape(19, -1).astype(np.int64).sum(axis=1))
