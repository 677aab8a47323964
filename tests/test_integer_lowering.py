"""Integer lowering of QDQ ONNX in Relax, built for the host and checked against references.

Single-operator models are written directly with onnx.helper (full control over scales, zero
points and power-of-2 schemes); they are compared bit for bit with a numpy integer reference.
The network tests export a small torch net, quantize it with onnxruntime's quantize_static and
compare the host build with onnxruntime on the same QDQ file.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

from segcompile.compile import HostModule, build_for_host, import_qdq, integer_reference, lower_to_integer
from segcompile.compile.integer_lowering import constant_bytes_by_dtype
from segcompile.errors import SegcompileError

QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}
NP_TO_ONNX = {np.dtype("int8"): TensorProto.INT8, np.dtype("uint8"): TensorProto.UINT8}


# ---------------------------------------------------------------------------------------------
# Hand-written QDQ models
# ---------------------------------------------------------------------------------------------
def _power_of_two(values: np.ndarray) -> np.ndarray:
    return np.exp2(np.ceil(np.log2(values))).astype(np.float32)


def _scalar(name: str, value, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def _qdq_pair(tensor: str, scale: str, zero: str) -> tuple[list[onnx.NodeProto], str]:
    nodes = [
        helper.make_node("QuantizeLinear", [tensor, scale, zero], [f"{tensor}_q"], name=f"{tensor}_quantize"),
        helper.make_node(
            "DequantizeLinear", [f"{tensor}_q", scale, zero], [f"{tensor}_dq"], name=f"{tensor}_deq"
        ),
    ]
    return nodes, f"{tensor}_dq"


def make_conv_qdq(
    path,
    *,
    in_channels=4,
    out_channels=6,
    kernel=3,
    stride=1,
    pad=1,
    dilation=1,
    groups=1,
    relu6=False,
    power_of_two=False,
    input_dtype="int8",
    size=12,
    seed=0,
    fake_quant_weights=False,
):
    """A QDQ model input -> Q/DQ -> Conv (int8 weights, int32 bias) -> [Clip 0..6] -> Q/DQ -> output.

    ``fake_quant_weights`` stores float weights behind QuantizeLinear, as QAT exports do.
    """
    rng = np.random.default_rng(seed)
    w_real = rng.normal(0, 0.3, (out_channels, in_channels // groups, kernel, kernel))
    w_scale = (np.abs(w_real).reshape(out_channels, -1).max(axis=1) / 127).astype(np.float32)
    x_scale, out_scale = np.float32(0.0273), np.float32(0.0517)
    if power_of_two:
        w_scale, x_scale, out_scale = _power_of_two(w_scale), np.float32(2**-5), np.float32(2**-4)
    x_zero = 0 if input_dtype == "int8" else 121
    w_q = np.clip(np.round(w_real / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
    bias_scale = (np.float32(x_scale) * w_scale).astype(np.float32)
    b_q = np.round(rng.normal(0, 0.5, out_channels) / bias_scale).astype(np.int32)

    nodes, x_dq = _qdq_pair("input", "x_scale", "x_zero")
    nodes += [
        *(
            [
                helper.make_node(
                    "QuantizeLinear", ["w_f", "w_scale", "w_zero"], ["w_q"], name="w_quant", axis=0
                )
            ]
            if fake_quant_weights
            else []
        ),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], name="w_deq", axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["b_dq"], name="b_deq", axis=0),
        helper.make_node(
            "Conv",
            [x_dq, "w_dq", "b_dq"],
            ["conv"],
            name="the_conv",
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad] * 4,
            dilations=[dilation, dilation],
            group=groups,
        ),
    ]
    last = "conv"
    if relu6:
        nodes.append(helper.make_node("Clip", ["conv", "six_min", "six_max"], ["relu6"], name="the_relu6"))
        last = "relu6"
    out_nodes, out_dq = _qdq_pair(last, "y_scale", "y_zero")
    nodes += out_nodes
    nodes.append(helper.make_node("Identity", [out_dq], ["logits"], name="output_identity"))
    initializers = [
        _scalar("x_scale", x_scale, np.float32),
        _scalar("x_zero", x_zero, input_dtype),
        numpy_helper.from_array(w_q, "w_q")
        if not fake_quant_weights
        else numpy_helper.from_array((w_q * w_scale[:, None, None, None]).astype(np.float32), "w_f"),
        numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.zeros(out_channels, np.int8), "w_zero"),
        numpy_helper.from_array(b_q, "b_q"),
        numpy_helper.from_array(bias_scale, "b_scale"),
        numpy_helper.from_array(np.zeros(out_channels, np.int32), "b_zero"),
        _scalar("y_scale", out_scale, np.float32),
        _scalar("y_zero", 0, np.int8),
        _scalar("six_min", 0.0, np.float32),
        _scalar("six_max", 6.0, np.float32),
    ]
    out_size = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    graph = helper.make_graph(
        nodes,
        "single_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, in_channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, out_channels, out_size, out_size])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, str(path))
    params = dict(
        x_scale=x_scale,
        x_zero=x_zero,
        input_dtype=input_dtype,
        w_q=w_q,
        w_scale=w_scale,
        b_q=b_q,
        out_scale=out_scale,
        stride=stride,
        pad=pad,
        dilation=dilation,
        groups=groups,
        relu6=relu6,
        shape=(1, in_channels, size, size),
    )
    return path, params


def make_single_op_qdq(
    path,
    op_type: str,
    node_name: str,
    *,
    in_shape=(1, 3, 8, 8),
    out_shape=None,
    attrs=None,
    constants=(),
    quantized_constant=None,
    x_scale=0.03,
    y_scale=1 / 255,
):
    """input -> Q/DQ -> <op_type>(x, *constants) -> Q/DQ -> output.

    ``constants`` are (name, array) pairs appended as extra inputs ("" for an omitted input);
    ``quantized_constant`` = (int8 array, scale) adds DequantizeLinear(const) as the second input.
    """
    nodes, x_dq = _qdq_pair("input", "x_scale", "x_zero")
    extra_names = [name for name, _ in constants]
    if quantized_constant is not None:
        values, scale = quantized_constant
        constants = [*constants, ("c_q", values), ("c_scale", np.array(scale, np.float32))]
        nodes.append(helper.make_node("DequantizeLinear", ["c_q", "c_scale"], ["c_dq"], name="c_deq"))
        extra_names.append("c_dq")
    nodes.append(helper.make_node(op_type, [x_dq, *extra_names], ["act"], name=node_name, **(attrs or {})))
    out_nodes, out_dq = _qdq_pair("act", "y_scale", "y_zero")
    nodes += out_nodes
    nodes.append(helper.make_node("Identity", [out_dq], ["logits"], name="output_identity"))
    graph = helper.make_graph(
        nodes,
        "single_op",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(out_shape or in_shape))],
        [
            _scalar("x_scale", x_scale, np.float32),
            _scalar("x_zero", 0, np.int8),
            _scalar("y_scale", y_scale, np.float32),
            _scalar("y_zero", 0, np.int8),
            *[numpy_helper.from_array(value, name) for name, value in constants if name],
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


# ---------------------------------------------------------------------------------------------
# Numpy integer reference of a quantized convolution
# ---------------------------------------------------------------------------------------------
def conv2d_integer(
    x: np.ndarray, w: np.ndarray, stride: int, pad: int, dilation: int, groups: int
) -> np.ndarray:
    """Exact int64 NCHW convolution (x already centred on its zero point, so pads with 0)."""
    x = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out_channels, group_in, kh, kw = w.shape
    span_h, span_w = (kh - 1) * dilation + 1, (kw - 1) * dilation + 1
    windows = sliding_window_view(x, (span_h, span_w), axis=(2, 3))[
        :, :, ::stride, ::stride, ::dilation, ::dilation
    ]
    group_out = out_channels // groups
    parts = []
    for g in range(groups):
        part = windows[:, g * group_in : (g + 1) * group_in]
        weights = w[g * group_out : (g + 1) * group_out].astype(np.int64)
        parts.append(np.einsum("ncxykl,ockl->noxy", part, weights))
    return np.concatenate(parts, axis=1)


def grid_input(params, seed=1) -> tuple[np.ndarray, np.ndarray]:
    """Input values on the quantization grid, so the entrance quantize is exact by construction."""
    qmin, qmax = QRANGE[params["input_dtype"]]
    levels = np.random.default_rng(seed).integers(qmin, qmax + 1, params["shape"])
    return ((levels - params["x_zero"]) * params["x_scale"]).astype(np.float32), levels


def reference_conv_output(params, levels: np.ndarray) -> np.ndarray:
    acc = conv2d_integer(
        levels - params["x_zero"],
        params["w_q"],
        params["stride"],
        params["pad"],
        params["dilation"],
        params["groups"],
    )
    acc = acc + params["b_q"].reshape(1, -1, 1, 1)
    real_scale = (
        np.float64(params["x_scale"]) * params["w_scale"].astype(np.float64) / np.float64(params["out_scale"])
    )
    lo, hi = -128, 127
    if params["relu6"]:
        lo, hi = 0, min(127, round(6.0 / float(params["out_scale"])))
    q = integer_reference(acc, real_scale, zero_point=0, qmin=lo, qmax=hi, channel_axis=1)
    return q.astype(np.float32) * np.float32(params["out_scale"])


def onnxruntime_output(path, feed: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: feed})[0]


CONV_CASES = {
    "conv3x3-stride2-per-channel": dict(stride=2),
    "depthwise-dilated-relu6": dict(in_channels=6, groups=6, dilation=2, pad=2, relu6=True),
    "pointwise-power-of-two-pure-shift": dict(kernel=1, pad=0, power_of_two=True),
    "uint8-input-zero-point-padded": dict(input_dtype="uint8", relu6=True),
    "fake-quantized-float-weights": dict(fake_quant_weights=True),
}


@pytest.fixture(scope="module", params=sorted(CONV_CASES))
def built_conv(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    path, params = make_conv_qdq(folder / "conv.qdq.onnx", **CONV_CASES[request.param])
    mod, report = lower_to_integer(import_qdq(path))
    library = build_for_host(mod, folder / "host")
    return path, params, mod, report, library


def test_single_conv_build_equals_numpy_integer_reference_bit_exactly(built_conv):
    path, params, _, report, library = built_conv
    feed, levels = grid_input(params)
    got = HostModule(library)(feed)
    np.testing.assert_array_equal(got, reference_conv_output(params, levels))
    assert ("the_conv", "Conv") in report.integer_nodes
    assert report.float_count == 0


def test_single_conv_agrees_with_onnxruntime_within_one_lsb(built_conv):
    path, params, _, _, library = built_conv
    feed, _ = grid_input(params, seed=7)
    scale = float(params["out_scale"])
    ours = np.round(HostModule(library)(feed) / scale)
    theirs = np.round(onnxruntime_output(path, feed) / scale)
    assert np.abs(ours - theirs).max() <= 1


def test_built_library_keeps_int8_weights(built_conv):
    _, params, mod, report, library = built_conv
    w_q = params["w_q"]
    # The lowered program holds the weights as int8 constants and no float copy of them ...
    assert report.constant_bytes["int8"] >= w_q.nbytes
    assert constant_bytes_by_dtype(mod).get("float32", 0) < w_q.size * 4
    # ... and the shipped library carries those int8 bytes, not dequantized float32 weights.
    blob = library.read_bytes()
    assert w_q.tobytes() in blob
    dequantized = (w_q.astype(np.float32) * params["w_scale"].reshape(-1, 1, 1, 1)).astype(np.float32)
    assert dequantized.tobytes() not in blob


def test_host_module_rejects_an_input_of_the_wrong_shape(built_conv):
    _, params, _, _, library = built_conv
    wrong = np.zeros((1, params["shape"][1], 5, 5), np.float32)
    with pytest.raises(SegcompileError, match="model.so.*shape"):
        HostModule(library)(wrong)


def test_power_of_two_scales_lower_to_a_shift_without_multiply(tmp_path):
    path, _ = make_conv_qdq(tmp_path / "p2.onnx", kernel=1, pad=0, power_of_two=True)
    mod, _ = lower_to_integer(import_qdq(path))
    text = mod["main"].script()
    assert "R.right_shift" in text
    assert "R.multiply" not in text.split("R.dequantize")[0]  # no multiply before the exit dequantize
    # The accumulator bound proves int32 cannot overflow, so the shift stays in int32 lanes.
    assert "int64" not in text


def test_lowered_main_takes_float_image_and_returns_float_logits(built_conv):
    _, params, mod, _, _ = built_conv
    main = mod["main"]
    assert len(main.params) == 1  # weights are bound as constants
    assert str(main.params[0].ty.dtype) == "float32"
    assert [int(v) for v in main.params[0].ty.shape.values] == list(params["shape"])
    assert str(main.ret_ty.dtype) == "float32"
    text = main.script()
    assert text.count("R.quantize(") == 1 and text.count("R.dequantize(") == 1
    assert 'out_dtype="int32"' in text and "R.nn.conv2d" in text


# Output scales are chosen so that s_in / s_out is not a simple fraction: then no result lands
# exactly on a .5 tie, which float32 arithmetic in onnxruntime breaks either way (see
# test_integer_bilinear_resize_is_the_exact_value_rounded_half_to_even for the tie-prone case).
SINGLE_OP_CASES = {
    "bilinear-half-pixel-non-integer-ratio": dict(
        op_type="Resize",
        out_shape=(1, 3, 21, 13),
        x_scale=0.05,
        y_scale=0.0437,
        attrs=dict(mode="linear", coordinate_transformation_mode="half_pixel"),
        constants=[("", None), ("", None), ("sizes", np.array([1, 3, 21, 13], np.int64))],
    ),
    "bilinear-align-corners-x2": dict(
        op_type="Resize",
        out_shape=(1, 3, 16, 16),
        x_scale=0.05,
        y_scale=0.0437,
        attrs=dict(mode="linear", coordinate_transformation_mode="align_corners"),
        constants=[("", None), ("scales", np.array([1, 1, 2, 2], np.float32))],
    ),
    "nearest-asymmetric-floor-x2": dict(
        op_type="Resize",
        out_shape=(1, 3, 16, 16),
        x_scale=0.05,
        y_scale=0.05,
        attrs=dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        constants=[("", None), ("scales", np.array([1, 1, 2, 2], np.float32))],
    ),
    "maxpool-3x3-stride2-padded": dict(
        op_type="MaxPool",
        out_shape=(1, 3, 4, 4),
        x_scale=0.05,
        y_scale=0.05,
        attrs=dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    ),
    "avgpool-3x3-padding-counted": dict(
        op_type="AveragePool",
        x_scale=0.05,
        y_scale=0.0437,
        attrs=dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
    ),
    "global-average-pool": dict(
        op_type="GlobalAveragePool",
        out_shape=(1, 3, 1, 1),
        x_scale=0.05,
        y_scale=0.0137,
    ),
    "relu-with-scale-change": dict(op_type="Relu", x_scale=0.05, y_scale=0.0437),
    "mul-by-quantized-constant": dict(
        op_type="Mul",
        x_scale=0.05,
        y_scale=0.0437,
        quantized_constant=(np.array([[[[-90]], [[40]], [[127]]]], np.int8), 0.0123),
    ),
    "matmul-by-quantized-weight": dict(
        op_type="MatMul",
        out_shape=(1, 3, 8, 5),
        x_scale=0.05,
        y_scale=0.0437,
        quantized_constant=(np.random.default_rng(9).integers(-127, 128, (8, 5)).astype(np.int8), 0.0041),
    ),
    "add-quantized-constant": dict(
        op_type="Add",
        x_scale=0.05,
        y_scale=0.0437,
        quantized_constant=(np.array([[[[-90]], [[40]], [[127]]]], np.int8), 0.0123),
    ),
}


@pytest.mark.parametrize("case", sorted(SINGLE_OP_CASES))
def test_single_integer_op_agrees_with_onnxruntime(case, tmp_path):
    spec = SINGLE_OP_CASES[case]
    path = make_single_op_qdq(tmp_path / f"{case}.onnx", node_name="the_op", **spec)
    mod, report = lower_to_integer(import_qdq(path))
    assert report.integer_nodes == (("the_op", spec["op_type"]),) and report.float_count == 0
    assert "R.image.resize2d" not in mod["main"].script()  # no float resize left behind
    feed = np.random.default_rng(3).normal(0, 2, (1, 3, 8, 8)).astype(np.float32)
    ours = np.round(HostModule(build_for_host(mod, tmp_path / "host"))(feed) / spec["y_scale"])
    theirs = np.round(onnxruntime_output(path, feed) / spec["y_scale"])
    assert np.abs(ours - theirs).max() <= 1
    assert np.mean(ours == theirs) >= 0.99


def test_integer_bilinear_resize_is_the_exact_value_rounded_half_to_even(tmp_path):
    """x2 half-pixel bilinear: weights 1/4, 3/4 are exact, so the integer result is exact."""
    path = make_single_op_qdq(
        tmp_path / "up.onnx",
        "Resize",
        "up",
        out_shape=(1, 3, 16, 16),
        x_scale=0.05,
        y_scale=0.05,
        attrs=dict(mode="linear", coordinate_transformation_mode="half_pixel"),
        constants=[("", None), ("scales", np.array([1, 1, 2, 2], np.float32))],
    )
    mod, _ = lower_to_integer(import_qdq(path))
    levels = np.random.default_rng(4).integers(-128, 128, (1, 3, 8, 8))
    got = HostModule(build_for_host(mod, tmp_path / "host"))((levels * np.float32(0.05)).astype(np.float32))
    # Separable exact interpolation in float64 (all weights are multiples of 1/4).
    source = (np.arange(16) + 0.5) / 2 - 0.5
    lower = np.clip(np.floor(source), 0, 7).astype(int)
    upper = np.minimum(lower + 1, 7)
    frac = np.clip(source, 0, 7) - lower
    rows = levels[:, :, lower, :] * (1 - frac)[:, None] + levels[:, :, upper, :] * frac[:, None]
    exact = rows[..., lower] * (1 - frac) + rows[..., upper] * frac
    np.testing.assert_array_equal(np.round(got / np.float32(0.05)), np.clip(np.round(exact), -128, 127))


def test_average_pool_excluding_padding_stays_float_with_reason(tmp_path):
    path = make_single_op_qdq(
        tmp_path / "pool.onnx",
        "AveragePool",
        "edge_pool",
        attrs=dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0),
    )
    _, report = lower_to_integer(import_qdq(path))
    assert [(node.name, node.op_type) for node in report.float_nodes] == [("edge_pool", "AveragePool")]
    assert "count" in report.float_nodes[0].reason


def test_rebuilt_library_at_the_same_path_is_the_one_that_runs(tmp_path):
    feed = np.random.default_rng(0).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    outputs = []
    for op_type in ("Relu", "Sigmoid"):
        path = make_single_op_qdq(tmp_path / f"{op_type}.onnx", op_type, "op")
        library = build_for_host(lower_to_integer(import_qdq(path))[0], tmp_path / "same-folder")
        outputs.append(HostModule(library)(feed))
    assert not np.array_equal(outputs[0], outputs[1])
    assert outputs[1].min() > 0  # sigmoid, not the relu built first at the same path


def test_host_build_is_byte_identical_across_runs(tmp_path):
    path = make_single_op_qdq(tmp_path / "relu.onnx", "Relu", "op")
    libraries = [
        build_for_host(lower_to_integer(import_qdq(path))[0], tmp_path / f"run{i}") for i in range(2)
    ]
    assert libraries[0].read_bytes() == libraries[1].read_bytes()


def test_lowering_is_deterministic(tmp_path):
    path, _ = make_conv_qdq(tmp_path / "conv.onnx", relu6=True)
    first, _ = lower_to_integer(import_qdq(path))
    second, _ = lower_to_integer(import_qdq(path))
    tvm.ir.assert_structural_equal(first, second)


def test_op_without_integer_kernel_stays_float_and_still_builds(tmp_path):
    path = make_single_op_qdq(tmp_path / "softmax.onnx", "Softmax", "class_softmax", attrs=dict(axis=1))
    mod, report = lower_to_integer(import_qdq(path))
    assert [(node.name, node.op_type) for node in report.float_nodes] == [("class_softmax", "Softmax")]
    assert "softmax" in report.float_nodes[0].reason
    assert report.summary() == "0 of 1 ops integer; float: class_softmax (Softmax)"
    feed = np.random.default_rng(0).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    got = HostModule(build_for_host(mod, tmp_path / "host"))(feed)
    expected = onnxruntime_output(path, feed)
    assert np.abs(np.round(got * 255) - np.round(expected * 255)).max() <= 1


def test_op_tvm_cannot_import_names_the_node(tmp_path):
    path = make_single_op_qdq(tmp_path / "celu.onnx", "Celu", "head_celu")
    with pytest.raises(SegcompileError) as caught:
        lower_to_integer(import_qdq(path))
    message = str(caught.value)
    assert "head_celu" in message and "Celu" in message and "celu.onnx" in message
    assert "\n" not in message


def test_missing_or_corrupt_file_is_a_clear_error(tmp_path):
    with pytest.raises(SegcompileError, match="no such QDQ ONNX file"):
        import_qdq(tmp_path / "absent.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"definitely not protobuf")
    with pytest.raises(SegcompileError, match="broken.onnx"):
        import_qdq(broken)


# ---------------------------------------------------------------------------------------------
# A small segmentation-like network quantized by onnxruntime
# ---------------------------------------------------------------------------------------------
NET_SIZE = 32


def _make_torch_net():
    import torch
    from torch import nn

    class TinySegNet(nn.Module):
        """conv, depthwise + dilated conv, relu6, residual add, concat, avgpool, gemm, gate, resize."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.depthwise = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
            self.pointwise = nn.Conv2d(8, 8, 1)
            self.fuse = nn.Conv2d(16, 8, 3, padding=1)
            self.pool = nn.AvgPool2d(2)
            self.fc = nn.Linear(8, 8)
            self.head = nn.Conv2d(8, 5, 1)

        def forward(self, x):
            a = torch.relu(self.stem(x))
            b = nn.functional.relu6(self.depthwise(a))
            b = self.pointwise(b) + a
            c = torch.relu(self.fuse(torch.cat([a, b], 1)))
            p = self.pool(c)
            gate = torch.sigmoid(self.fc(p.mean((2, 3))))[:, :, None, None]
            p = p * gate
            p = nn.functional.interpolate(p, scale_factor=4, mode="bilinear", align_corners=False)
            return self.head(p)

    torch.manual_seed(0)
    return TinySegNet().eval(), torch


def _frames(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 3, NET_SIZE, NET_SIZE)).astype(np.float32) for _ in range(count)]


@pytest.fixture(scope="module")
def float_net_onnx(tmp_path_factory):
    import onnxsim

    net, torch = _make_torch_net()
    path = tmp_path_factory.mktemp("net") / "float.onnx"
    example = torch.zeros(1, 3, NET_SIZE, NET_SIZE)
    torch.onnx.export(
        net,
        (example,),
        str(path),
        dynamo=True,
        external_data=False,
        input_names=["input"],
        output_names=["logits"],
        verbose=False,
    )
    simplified, ok = onnxsim.simplify(onnx.load(str(path)))
    assert ok
    onnx.save(simplified, str(path))
    return path


NET_SCHEMES = {
    "s8s8-symmetric-per-channel": dict(
        activation="QInt8", extra={"ActivationSymmetric": True, "WeightSymmetric": True}
    ),
    "u8s8-asymmetric-activations": dict(activation="QUInt8", extra={"WeightSymmetric": True}),
}


@pytest.fixture(scope="module", params=sorted(NET_SCHEMES))
def built_net(request, float_net_onnx):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Frames(CalibrationDataReader):
        def __init__(self):
            self._frames = iter(_frames(4, seed=11))

        def get_next(self):
            frame = next(self._frames, None)
            return None if frame is None else {"input": frame}

    scheme = NET_SCHEMES[request.param]
    qdq_path = float_net_onnx.parent / f"{request.param}.qdq.onnx"
    quantize_static(
        str(float_net_onnx),
        str(qdq_path),
        Frames(),
        quant_format=QuantFormat.QDQ,
        activation_type=getattr(QuantType, scheme["activation"]),
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options=scheme["extra"],
    )
    mod, report = lower_to_integer(import_qdq(qdq_path))
    library = build_for_host(mod, float_net_onnx.parent / f"host-{request.param}")
    return qdq_path, report, library


def _output_quantization(model: onnx.ModelProto) -> tuple[float, int]:
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producer = next(node for node in model.graph.node if node.output[0] == model.graph.output[0].name)
    assert producer.op_type == "DequantizeLinear"
    return float(values[producer.input[1]]), int(values[producer.input[2]])


@pytest.mark.slow
def test_network_agrees_with_onnxruntime_within_one_lsb(built_net):
    qdq_path, _, library = built_net
    scale, zero = _output_quantization(onnx.load(str(qdq_path)))
    module = HostModule(library)
    differences = []
    for frame in _frames(3, seed=99):
        ours = np.round(module(frame) / scale) + zero
        theirs = np.round(onnxruntime_output(qdq_path, frame) / scale) + zero
        differences.append(np.abs(ours - theirs).ravel())
    differences = np.concatenate(differences)
    assert np.mean(differences <= 1) >= 0.999
    assert np.mean(differences == 0) >= 0.9  # mostly bit-identical, not merely close


@pytest.mark.slow
def test_network_report_lists_every_conv_as_integer(built_net):
    _, report, _ = built_net
    counts = report.counts_by_op_type()
    assert counts["Conv"] == {"integer": 5, "float": 0}
    for op_type in ("Add", "Concat", "Resize", "AveragePool", "ReduceMean", "Gemm", "Mul", "Sigmoid"):
        assert report.all_integer(op_type), (op_type, counts)
    # onnxruntime keeps Relu/Clip as nodes for symmetric activations and folds them into the
    # output range for asymmetric ones; where they exist they must be integer too.
    for op_type in set(counts) & {"Relu", "Clip"}:
        assert report.all_integer(op_type), (op_type, counts)


@pytest.mark.slow
def test_network_sigmoid_gate_is_an_integer_lookup_table(built_net):
    _, report, _ = built_net
    assert report.float_nodes == ()  # the sigmoid gate too: a 256-entry table (passes/lookup_table.py)
    assert report.all_integer("Sigmoid")
