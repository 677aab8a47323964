"""The channels-last passes of the x86 pipeline: Clip as operators, padded classifier channels (issue 6)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

SHAPE = (1, 8, 12, 10)


def _conv_clip_model(out_channels: int) -> onnx.ModelProto:
    """Conv(3x3, pad 1) -> Clip(0, 6) -> Conv(1x1, ``out_channels``): a ReLU6 block and a classifier."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, SHAPE[1], 3, 3)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        numpy_helper.from_array(rng.standard_normal((out_channels, 16, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_clip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_channels, SHAPE[2], SHAPE[3]])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _import(model: onnx.ModelProto):
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(model, shape_dict={"x": list(SHAPE)})


def _calls(mod, name: str) -> int:
    import tvm
    from tvm import relax

    count = 0

    def visit(expr):
        nonlocal count
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name:
            count += 1

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return count


def _onnxruntime(model: onnx.ModelProto, data: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": data})[0]


def _run(mod, data: np.ndarray, passes=()) -> np.ndarray:
    import tvm
    from tvm import relax

    from segcompile.compile.tuning import compile_tuned

    mod = tvm.transform.Sequential(list(passes))(mod)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"})
    executable = compile_tuned(mod, target, hand_schedules=False)
    return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()


def test_clip_kernels_become_maximum_and_minimum_operators():
    from segcompile.compile.passes import ClipKernelsToOps

    mod = _import(_conv_clip_model(16))
    assert _calls(mod, "relax.call_tir") == 2  # the importer's TOPI maximum and minimum kernels
    rewritten = ClipKernelsToOps()(mod)
    assert _calls(rewritten, "relax.call_tir") == 0
    assert _calls(rewritten, "relax.maximum") == 1 and _calls(rewritten, "relax.minimum") == 1
    data = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32) * 4
    np.testing.assert_allclose(_run(rewritten, data), _onnxruntime(_conv_clip_model(16), data), atol=1e-4)


def test_clip_stays_in_channels_last_layout():
    """With Clip as operators, ConvertLayout needs no transposes between the two convolutions."""
    from tvm import relax

    from segcompile.compile.passes import ClipKernelsToOps

    to_nhwc = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})
    before = to_nhwc(_import(_conv_clip_model(16)))
    after = to_nhwc(ClipKernelsToOps()(_import(_conv_clip_model(16))))
    # Entrance, exit and the two weights are transposed either way; the clip no longer is.
    assert _calls(after, "relax.permute_dims") < _calls(before, "relax.permute_dims")


@pytest.mark.parametrize("classes", [19, 21])
def test_classifier_channels_are_padded_to_whole_vectors_and_sliced_back(classes):
    from tvm import relax

    from segcompile.compile.passes import ClipKernelsToOps, PadConvOutputChannels

    mod = _import(_conv_clip_model(classes))
    channels_last = [ClipKernelsToOps(), relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})]
    padded = PadConvOutputChannels(16)(tvm_sequential(channels_last)(mod))
    assert _calls(padded, "relax.strided_slice") == 1  # only the classifier (16 channels stay as they are)
    data = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    expected = _onnxruntime(_conv_clip_model(classes), data)
    out = _run(padded, data)
    assert out.shape == expected.shape == (1, classes, SHAPE[2], SHAPE[3])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


def tvm_sequential(passes):
    import tvm

    return tvm.transform.Sequential(passes)


def test_host_profile_builds_for_this_machines_cpu_by_name():
    import tvm.target.codegen

    from segcompile.compile.profiles import load_profile
    from segcompile.compile.targets import target_dict

    (core,) = load_profile("host").cores
    assert core.mcpu == "native"
    target = target_dict(core)
    assert target["mcpu"] == str(tvm.target.codegen.llvm_get_system_cpu()) != "native"


def _conv_resize_model(mode: str, scale: float) -> onnx.ModelProto:
    """Conv(1x1) -> Resize(linear, ``mode``, x``scale``) -> Conv(1x1) -> Resize: a decoder upsample
    (channels-last, between convolutions) and a final upsample to the NCHW output."""
    rng = np.random.default_rng(4)
    out_h, out_w = int(SHAPE[2] * scale), int(SHAPE[3] * scale)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, SHAPE[1], 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((5, 16, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([1, 16, out_h, out_w], np.int64), "size1"),
        numpy_helper.from_array(np.array([1, 5, 2 * out_h, 2 * out_w], np.int64), "size2"),
    ]
    resize = {"mode": "linear", "coordinate_transformation_mode": mode}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("Resize", ["c1", "", "", "size1"], ["r1"], **resize),
        helper.make_node("Conv", ["r1", "w2"], ["c2"]),
        helper.make_node("Resize", ["c2", "", "", "size2"], ["y"], **resize),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 2 * out_h, 2 * out_w])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize(
    ("mode", "scale"),
    [("half_pixel", 4), ("align_corners", 2), ("asymmetric", 3), ("pytorch_half_pixel", 2.5)],
)
def test_linear_resize_by_tap_tables_matches_onnxruntime(mode, scale):
    from tvm import relax

    from segcompile.compile.passes import ClipKernelsToOps, ResizeToTapTables

    model = _conv_resize_model(mode, scale)
    channels_last = tvm_sequential(
        [ClipKernelsToOps(), relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})]
    )(_import(model))
    rewritten = ResizeToTapTables()(channels_last)
    assert _calls(rewritten, "relax.image.resize2d") == 0
    kernels = sorted(gv.name_hint for gv, f in rewritten.functions.items() if "tap_resize" in gv.name_hint)
    assert len(kernels) == 2
    data = np.random.default_rng(5).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, data), _onnxruntime(model, data), rtol=1e-5, atol=1e-4)


def test_final_resize_transposes_its_small_input_instead_of_its_large_output():
    from tvm import relax

    from segcompile.compile.passes import ResizeToTapTables

    model = _conv_resize_model("half_pixel", 4)
    channels_last = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(_import(model))
    rewritten = ResizeToTapTables()(channels_last)
    text = rewritten["main"].script()
    out_h, out_w = 2 * SHAPE[2] * 4, 2 * SHAPE[3] * 4
    # The graph output comes straight from an NCHW resize: no channels-last tensor of the full output
    # size exists (the transpose happens before the upsample, on 16x fewer pixels).
    assert f"R.Tensor((1, 5, {out_h}, {out_w})" in text
    assert f"(1, {out_h}, {out_w}, 5)" not in text
    data = np.random.default_rng(6).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, data), _onnxruntime(model, data), rtol=1e-5, atol=1e-4)


def _resize_concat_model(shortcut_channels: int) -> onnx.ModelProto:
    """DeepLabV3Lite's decoder: Conv -> Resize(x2) concatenated with a full-resolution Conv -> Conv."""
    rng = np.random.default_rng(9)

    def weight(*shape: int):
        return rng.standard_normal(shape).astype(np.float32)

    inits = [
        numpy_helper.from_array(weight(32, SHAPE[1], 2, 2), "w1"),
        numpy_helper.from_array(weight(shortcut_channels, SHAPE[1], 1, 1), "ws"),
        numpy_helper.from_array(weight(5, 32 + shortcut_channels, 1, 1), "w2"),
        numpy_helper.from_array(np.array([1, 32, SHAPE[2], SHAPE[3]], np.int64), "size"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], strides=[2, 2]),
        helper.make_node("Resize", ["c1", "", "", "size"], ["up"], mode="linear"),
        helper.make_node("Conv", ["x", "ws"], ["short"]),
        helper.make_node("Concat", ["up", "short"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "resize_concat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, SHAPE[2], SHAPE[3]])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize(("shortcut_channels", "fused"), [(16, True), (12, False)])
def test_resize_writes_into_the_concat_after_it_when_parts_are_whole_vectors(shortcut_channels, fused):
    from tvm import relax

    from segcompile.compile.passes import ClipKernelsToOps, ResizeToTapTables

    model = _resize_concat_model(shortcut_channels)
    channels_last = tvm_sequential(
        [ClipKernelsToOps(), relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})]
    )(_import(model))
    rewritten = ResizeToTapTables()(channels_last)
    assert _calls(rewritten, "relax.concat") == (0 if fused else 1)
    data = np.random.default_rng(10).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, data), _onnxruntime(model, data), rtol=1e-5, atol=1e-4)
