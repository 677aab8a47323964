"""Depthwise + 1x1 convolutions as one kernel on x86 (issue 6): same numbers as onnxruntime, fused only
where it is safe, and the depthwise result computed inside the 1x1's pixel tiles."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

SHAPE = (1, 16, 20, 24)
EXPANDED = 48


def _inverted_residual(
    stride: int = 1,
    dilation: int = 1,
    activation: str = "relu6",
    depthwise_bias: bool = False,
    project: int = 16,
    depthwise_is_output: bool = False,
) -> onnx.ModelProto:
    """MobileNetV2's block: 1x1 expand + ReLU6, 3x3 depthwise (+ bias) + ``activation``, 1x1 project
    (+ residual add at stride 1). ``depthwise_is_output`` also returns the activated depthwise result."""
    rng = np.random.default_rng(stride * 10 + dilation)
    inits = [
        numpy_helper.from_array(
            rng.standard_normal((EXPANDED, SHAPE[1], 1, 1)).astype(np.float32) * 0.3, "we"
        ),
        numpy_helper.from_array(rng.standard_normal((EXPANDED, 1, 3, 3)).astype(np.float32) * 0.5, "wd"),
        numpy_helper.from_array(rng.standard_normal(EXPANDED).astype(np.float32), "bd"),
        numpy_helper.from_array(
            rng.standard_normal((project, EXPANDED, 1, 1)).astype(np.float32) * 0.2, "wp"
        ),
        numpy_helper.from_array(rng.standard_normal(project).astype(np.float32), "bp"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
    ]
    depthwise_inputs = ["e", "wd", "bd"] if depthwise_bias else ["e", "wd"]
    nodes = [
        helper.make_node("Conv", ["x", "we"], ["e0"]),
        helper.make_node("Clip", ["e0", "lo", "hi"], ["e"]),
        helper.make_node(
            "Conv",
            depthwise_inputs,
            ["d0"],
            group=EXPANDED,
            strides=[stride] * 2,
            dilations=[dilation] * 2,
            pads=[dilation] * 4,
        ),
    ]
    if activation == "relu6":
        nodes.append(helper.make_node("Clip", ["d0", "lo", "hi"], ["d"]))
    elif activation == "relu":
        nodes.append(helper.make_node("Relu", ["d0"], ["d"]))
    else:
        nodes.append(helper.make_node("Identity", ["d0"], ["d"]))
    residual = stride == 1 and project == SHAPE[1]
    nodes.append(helper.make_node("Conv", ["d", "wp", "bp"], ["p" if residual else "y"]))
    if residual:
        nodes.append(helper.make_node("Add", ["p", "x"], ["y"]))
    out_h, out_w = -(-SHAPE[2] // stride), -(-SHAPE[3] // stride)
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, project, out_h, out_w])]
    if depthwise_is_output:
        outputs.append(helper.make_tensor_value_info("d", TensorProto.FLOAT, [1, EXPANDED, out_h, out_w]))
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))], outputs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _target():
    import tvm

    from segcompile.compile.profiles import load_profile
    from segcompile.compile.targets import target_dict

    (core,) = load_profile("host").cores
    return tvm.target.Target(target_dict(core))


def _channels_last(model: onnx.ModelProto):
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from segcompile.compile.tuning import layout_passes

    target = _target()
    with target:
        return tvm.transform.Sequential(layout_passes(target))(
            from_onnx(model, shape_dict={"x": list(SHAPE)})
        )


def _fused_kernels(mod) -> list[str]:
    return sorted(gv.name_hint for gv in mod.functions if gv.name_hint.startswith("depthwise_pointwise"))


def _depthwise_convs(mod) -> int:
    from tvm import relax

    count = 0

    def visit(expr):
        nonlocal count
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.nn.conv2d":
            count += int(expr.attrs.groups) > 1

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return count


def _compiled_outputs(model: onnx.ModelProto, data: np.ndarray) -> list[np.ndarray]:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from segcompile.compile.tuning import compile_tuned

    executable = compile_tuned(from_onnx(model, shape_dict={"x": list(SHAPE)}), _target())
    result = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(data))
    if isinstance(result, tvm.runtime.Tensor):
        return [result.numpy()]
    return [r.numpy() for r in result]


def _onnxruntime(model: onnx.ModelProto, data: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": data})


@pytest.mark.parametrize(
    ("stride", "dilation", "activation", "depthwise_bias", "project"),
    [
        (1, 1, "relu6", False, 16),  # MobileNetV2 block with residual add
        (2, 1, "relu6", False, 24),  # downsampling block
        (1, 2, "relu", True, 16),  # dilated (DeepLabV3 output stride 16), ReLU, depthwise bias
        (1, 1, "none", False, 21),  # a classifier after a linear depthwise (padded to 32, sliced)
    ],
)
def test_fused_block_matches_onnxruntime(stride, dilation, activation, depthwise_bias, project):
    model = _inverted_residual(stride, dilation, activation, depthwise_bias, project)
    assert len(_fused_kernels(_channels_last(model))) == 1
    data = np.random.default_rng(7).standard_normal(SHAPE).astype(np.float32)
    (out,) = _compiled_outputs(model, data)
    (expected,) = _onnxruntime(model, data)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_every_depthwise_followed_by_a_1x1_is_fused():
    mod = _channels_last(_inverted_residual())
    assert _fused_kernels(mod) == ["depthwise_pointwise_0"]
    assert _depthwise_convs(mod) == 0


def test_a_depthwise_result_used_elsewhere_is_left_unfused():
    model = _inverted_residual(depthwise_is_output=True)
    mod = _channels_last(model)
    assert _fused_kernels(mod) == [] and _depthwise_convs(mod) == 1
    data = np.random.default_rng(8).standard_normal(SHAPE).astype(np.float32)
    for out, expected in zip(_compiled_outputs(model, data), _onnxruntime(model, data), strict=True):
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_depthwise_values_are_computed_inside_the_pointwise_pixel_tiles():
    """The schedule's point: no full-size depthwise result; each pixel tile makes the values it needs."""
    import tvm
    from tvm import s_tir, tirx
    from tvm.relax.frontend.onnx import from_onnx

    from segcompile.compile.cpu_schedules import schedule_module_pass
    from segcompile.compile.depthwise_pointwise import DEPTHWISE_BLOCK, POINTWISE_BLOCK
    from segcompile.compile.tuning import legalize

    target = _target()
    legal = legalize(from_onnx(_inverted_residual(), shape_dict={"x": list(SHAPE)}), target)
    with target:
        scheduled = schedule_module_pass()(legal)
    (kernel,) = [f for gv, f in scheduled.functions.items() if "depthwise_pointwise" in gv.name_hint]
    assert isinstance(kernel, tirx.PrimFunc)
    sch = s_tir.Schedule(tvm.IRModule({"main": kernel}))
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    # The update blocks (decompose_reduction added "_init" blocks, cache_write a "_local" copy).
    (depthwise,) = [n for n in names if n.startswith(DEPTHWISE_BLOCK) and not n.endswith(("_init", "_local"))]
    (pointwise,) = [n for n in names if n.startswith(POINTWISE_BLOCK) and not n.endswith(("_init", "_local"))]
    depthwise_loops = sch.get_loops(sch.get_sblock(depthwise))
    pointwise_loops = sch.get_loops(sch.get_sblock(pointwise))
    # Same parallel row loop and same pixel-tile loop: the depthwise block lives inside the tile.
    assert [sch.get(lp) for lp in depthwise_loops[:2]] == [sch.get(lp) for lp in pointwise_loops[:2]]
    assert int(sch.get(depthwise_loops[0]).kind) == int(tirx.ForKind.PARALLEL)
