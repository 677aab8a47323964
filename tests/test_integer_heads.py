"""Operators of "bring your own ONNX" heads through quantization and the integer lowering (issue #8, part 2).

Each model is a small torch module exported at opset 18 (as a user's file would be), quantized by the
quantize stage under a target scheme, lowered to integer Relax and built for the host. The integer module is
compared with onnxruntime running the same QDQ ONNX (output levels within 1 LSB for >= 99.9% of elements,
and nearly all identical), with the float model (the quantization is sane), and the lowering report must
list the operator as integer. Operators without an integer kernel stay float, named in the report, and the
model still compiles and runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
import tvm
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from tvm import relax

from segcompile.compile import HostModule, LoweringReport, build_for_host, import_qdq, lower_to_integer
from segcompile.compile.c_kernels import emit_dsp_sources
from segcompile.compile.dsp_partition import partition_for_dsp
from segcompile.compile.host_runtime import compile_relax, host_target
from segcompile.compile.profiles import load_profile
from segcompile.compile.stage import check_dsp_sources
from segcompile.quantize import QuantizeConfig, get_scheme, run_quantize
from segcompile.quantize.qat import export_qat_onnx, observe_qat, prepare_qat

SHAPE = (1, 3, 12, 16)
OPSET = 18


@pytest.fixture(autouse=True)
def _seeded_weights():
    """Modules are built inside each test: seed first, so every run sees the same weights."""
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------------------
# Export, quantize, lower, build, compare
# ---------------------------------------------------------------------------------------------------------
def _frames(count: int, seed: int, shape=SHAPE) -> list[np.ndarray]:
    """Seeded image-like inputs: smooth gradients plus noise, roughly normalized."""
    rng = np.random.default_rng(seed)
    _, c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for _ in range(count):
        image = np.empty(shape, np.float32)
        for channel in range(c):
            a, b, p = rng.uniform(-1.5, 1.5, 3)
            image[0, channel] = a * xx / w + b * yy / h + p
        frames.append((image + rng.normal(0, 0.3, shape)).astype(np.float32))
    return frames


def export(module: nn.Module, path: Path, shape=SHAPE) -> Path:
    """torch -> ONNX at opset 18 (dynamo, one file) -> onnxsim, as a user's exported file."""
    import onnxsim

    raw = path.with_suffix(".raw.onnx")
    torch.onnx.export(
        module.eval(),
        (torch.zeros(shape),),
        str(raw),
        dynamo=True,
        opset_version=OPSET,
        external_data=False,
        input_names=["input"],
        output_names=["logits"],
        verbose=False,
    )
    simplified, ok = onnxsim.simplify(onnx.load(str(raw)))
    assert ok
    onnx.save(simplified, str(path))
    return path


@dataclass
class Built:
    float_onnx: Path
    qdq_onnx: Path
    report: LoweringReport
    module: HostModule
    shape: tuple[int, ...]

    def output_quantization(self) -> tuple[float, int]:
        model = onnx.load(str(self.qdq_onnx))
        values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        producer = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
        assert producer.op_type == "DequantizeLinear", "the model output is not quantized"
        return float(values[producer.input[1]]), int(values[producer.input[2]])


def build(module: nn.Module, folder: Path, scheme: str = "per-channel", shape=SHAPE, edit=None) -> Built:
    """Export ``module`` (``edit`` changes the float ONNX in place), quantize, lower, build for the host."""
    float_onnx = export(module, folder / "float.onnx", shape)
    if edit is not None:
        model = onnx.load(str(float_onnx))
        edit(model)
        onnx.checker.check_model(model)
        onnx.save(model, str(float_onnx))
    result = run_quantize(
        QuantizeConfig(scheme=get_scheme(scheme), frames=4, sqnr_frames=0),
        float_onnx,
        _frames(4, seed=1, shape=shape),
        folder / "quantized",
    )
    mod, report = lower_to_integer(import_qdq(result.qdq_onnx))
    return Built(float_onnx, result.qdq_onnx, report, HostModule(build_for_host(mod, folder / "host")), shape)


def _run_onnx(path: Path, frame: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: frame})[0]


def assert_matches_onnxruntime(built: Built, frames: int = 2, identical: float = 0.99) -> None:
    """Output levels of the integer module vs onnxruntime on the QDQ graph: <= 1 LSB, nearly all equal.

    ``identical`` is the fraction of output levels that must be bit-identical.
    """
    scale, zero = built.output_quantization()
    differences = []
    for frame in _frames(frames, seed=99, shape=built.shape):
        ours = np.round(built.module(frame) / scale) + zero
        theirs = np.round(_run_onnx(built.qdq_onnx, frame) / scale) + zero
        assert ours.shape == theirs.shape
        differences.append(np.abs(ours - theirs).ravel())
    differences = np.concatenate(differences)
    assert np.mean(differences <= 1) >= 0.999, differences.max()
    assert np.mean(differences == 0) >= identical


def assert_close_to_float(built: Built, max_relative_error: float = 0.1) -> None:
    """The int8 result is a good approximation of the float model (the quantization is sane)."""
    frame = _frames(1, seed=7, shape=built.shape)[0]
    reference = _run_onnx(built.float_onnx, frame)
    got = built.module(frame)
    error = np.sqrt(((got - reference) ** 2).mean() / (reference**2).mean())
    assert error < max_relative_error, error


def assert_integer(report: LoweringReport, *op_types: str) -> None:
    counts = report.counts_by_op_type()
    for op_type in op_types:
        assert report.all_integer(op_type), (op_type, counts, report.float_nodes)


def _zero_points(path: Path) -> set[int]:
    model = onnx.load(str(path))
    return {
        int(numpy_helper.to_array(init))
        for init in model.graph.initializer
        if init.name.endswith("_zero_point") and init.dims == [] and init.data_type != TensorProto.INT32
    }


# ---------------------------------------------------------------------------------------------------------
# ConvTranspose (learned upsampling)
# ---------------------------------------------------------------------------------------------------------
class Upsampler(nn.Module):
    """conv (no activation: a signed tensor) -> ConvTranspose x2 -> output."""

    def __init__(self, kernel: int = 4, padding: int = 1, output_padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.up = nn.ConvTranspose2d(6, 4, kernel, stride=2, padding=padding, output_padding=output_padding)

    def forward(self, x):
        return self.up(self.conv(x))


@pytest.mark.parametrize("scheme", ["per-channel", "tda4vm"])
def test_conv_transpose_is_integer_and_matches_onnxruntime(tmp_path, scheme):
    built = build(Upsampler(), tmp_path, scheme)
    assert_integer(built.report, "ConvTranspose", "Conv")
    assert built.report.float_count == 0
    assert_matches_onnxruntime(built)
    assert_close_to_float(built)


def test_conv_transpose_input_with_a_zero_point_is_centred_exactly(tmp_path):
    built = build(Upsampler(kernel=3, padding=1, output_padding=1), tmp_path, "per-channel-asym")
    assert _zero_points(built.qdq_onnx) - {0}  # the conv output feeding ConvTranspose has a zero point
    assert_integer(built.report, "ConvTranspose")
    assert built.report.float_count == 0
    assert_matches_onnxruntime(built)
    assert_close_to_float(built)


def test_grouped_conv_transpose_stays_float_by_name_and_still_runs(tmp_path):
    class Depthwise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.up = nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, groups=4)

        def forward(self, x):
            return self.up(torch.relu(self.conv(x)))

    built = build(Depthwise(), tmp_path)
    floats = [(node.op_type, node.reason) for node in built.report.float_nodes]
    assert [op for op, _ in floats] == ["ConvTranspose"]
    assert "not quantized" in floats[0][1]
    assert_integer(built.report, "Conv")
    frame = _frames(1, seed=3)[0]
    np.testing.assert_allclose(built.module(frame), _run_onnx(built.qdq_onnx, frame), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Elementwise activations: one 256-entry table each
# ---------------------------------------------------------------------------------------------------------
class Activated(nn.Module):
    """conv -> activation -> 1x1 conv."""

    def __init__(self, activation) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.activation = activation
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.head(self.activation(self.conv(x)))


ACTIVATIONS = {
    "HardSigmoid": (nn.Hardsigmoid(), "per-channel"),
    "HardSwish": (nn.Hardswish(), "per-channel"),
    "HardSwish-power-of-two": (nn.Hardswish(), "tda4vm"),
    "Sigmoid-asymmetric": (nn.Sigmoid(), "per-channel-asym"),
    "Tanh": (nn.Tanh(), "per-channel"),
    "LeakyRelu": (nn.LeakyReLU(0.1), "per-channel-asym"),
}


@pytest.mark.parametrize("case", sorted(ACTIVATIONS))
def test_elementwise_activation_becomes_a_lookup_table(tmp_path, case):
    activation, scheme = ACTIVATIONS[case]
    op_type = case.split("-")[0]
    built = build(Activated(activation), tmp_path, scheme)
    assert_integer(built.report, op_type, "Conv")
    assert built.report.float_count == 0
    assert_matches_onnxruntime(built)
    assert_close_to_float(built)


def test_silu_is_an_integer_sigmoid_table_and_an_integer_product(tmp_path):
    built = build(Activated(nn.SiLU()), tmp_path)
    assert_integer(built.report, "Sigmoid", "Mul")
    assert built.report.float_count == 0
    assert_matches_onnxruntime(built)


class ProbabilityHead(nn.Module):
    """One-channel probability output: conv -> relu -> 1x1 conv -> Sigmoid (the model output)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 1, 1)

    def forward(self, x):
        return torch.sigmoid(self.head(torch.relu(self.conv(x))))


@pytest.fixture(scope="module")
def probability_heads(tmp_path_factory) -> dict[str, Built]:
    torch.manual_seed(0)  # module-scoped: set up before the per-test seed
    return {
        scheme: build(ProbabilityHead(), tmp_path_factory.mktemp(scheme), scheme)
        for scheme in ("per-channel", "per-channel-asym")
    }


@pytest.mark.parametrize("scheme", ["per-channel", "per-channel-asym"])
def test_sigmoid_on_the_model_output_is_integer(probability_heads, scheme):
    built = probability_heads[scheme]
    assert_integer(built.report, "Sigmoid")
    assert built.report.float_count == 0
    assert_matches_onnxruntime(built)
    probability = built.module(_frames(1, seed=5)[0])
    assert probability.min() >= 0.0 and probability.max() <= 1.0 + 1e-6


def test_sigmoid_output_is_stored_unsigned_under_an_unsigned_scheme(probability_heads):
    built = probability_heads["per-channel-asym"]
    model = onnx.load(str(built.qdq_onnx))
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producer = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    zero_point = values[producer.input[2]]
    # Non-negative by construction: the whole uint8 grid covers [0, 1], none of it wasted below 0.
    assert zero_point.dtype == np.uint8 and int(zero_point) == 0


# ---------------------------------------------------------------------------------------------------------
# Squeeze-excite: x * sigmoid(conv(relu(conv(GAP(x)))))
# ---------------------------------------------------------------------------------------------------------
class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.reduce = nn.Conv2d(8, 4, 1)
        self.expand = nn.Conv2d(4, 8, 1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))
        return self.head(x * gate)


def _global_average_pool(model: onnx.ModelProto) -> None:
    """ReduceMean over H, W (torch's export) -> GlobalAveragePool, as other exporters write it."""
    for index, node in enumerate(model.graph.node):
        if node.op_type == "ReduceMean":
            pool = helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name)
            model.graph.node.remove(node)
            model.graph.node.insert(index, pool)


@pytest.mark.parametrize(
    ("scheme", "edit", "pool"),
    [("per-channel", None, "ReduceMean"), ("tda4vm", _global_average_pool, "GlobalAveragePool")],
)
def test_squeeze_excite_gate_and_broadcast_product_are_integer(tmp_path, scheme, edit, pool):
    built = build(SqueezeExcite(), tmp_path, scheme, edit=edit)
    assert_integer(built.report, pool, "Sigmoid", "Mul", "Conv")
    assert built.report.float_count == 0
    assert_matches_onnxruntime(built)
    assert_close_to_float(built)


# ---------------------------------------------------------------------------------------------------------
# Resize in its variants
# ---------------------------------------------------------------------------------------------------------
class Resized(nn.Module):
    def __init__(self, **interpolate) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.interpolate = interpolate

    def forward(self, x):
        return F.interpolate(self.conv(x), **self.interpolate)


def _set_resize(**attributes):
    def edit(model: onnx.ModelProto) -> None:
        for node in model.graph.node:
            if node.op_type == "Resize":
                for attribute in node.attribute:
                    if attribute.name in attributes:
                        attribute.s = attributes[attribute.name].encode()

    return edit


RESIZES = {
    # torch's own export (nearest -> asymmetric/floor, bilinear -> half_pixel or align_corners)
    "nearest-asymmetric-floor-x2": (dict(scale_factor=2, mode="nearest"), None),
    "bilinear-half-pixel-x2": (dict(scale_factor=2, mode="bilinear", align_corners=False), None),
    "bilinear-align-corners-to-23x29": (dict(size=(23, 29), mode="bilinear", align_corners=True), None),
    # what other exporters write (older torch: pytorch_half_pixel; ONNX defaults: round_prefer_floor)
    "bilinear-pytorch-half-pixel-to-21x35": (
        dict(size=(21, 35), mode="bilinear", align_corners=False),
        _set_resize(coordinate_transformation_mode="pytorch_half_pixel"),
    ),
    "bilinear-half-pixel-downscale": (dict(size=(5, 7), mode="bilinear", align_corners=False), None),
    "nearest-tf-half-pixel-for-nn-x2": (
        dict(scale_factor=2, mode="nearest"),
        _set_resize(coordinate_transformation_mode="tf_half_pixel_for_nn", nearest_mode="round_prefer_ceil"),
    ),
    "nearest-half-pixel-round-prefer-floor-x3": (
        dict(scale_factor=3, mode="nearest"),
        _set_resize(coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor"),
    ),
}


@pytest.mark.parametrize("case", sorted(RESIZES))
def test_resize_variant_is_integer_and_matches_onnxruntime(tmp_path, case):
    interpolate, edit = RESIZES[case]
    built = build(Resized(**interpolate), tmp_path, edit=edit)
    assert_integer(built.report, "Resize")
    assert built.report.float_count == 0
    # Resize shares its input's scale, so bilinear results land exactly on .5 ties (e.g. weights 1/4, 3/4):
    # the integer kernel rounds the exact value half to even, onnxruntime's float32 arithmetic breaks
    # those ties either way (test_integer_lowering checks the exact rounding). Hence ~1.5% differ by 1.
    assert_matches_onnxruntime(built, identical=0.95 if "bilinear" in case else 0.99)


# ---------------------------------------------------------------------------------------------------------
# Unfused BatchNormalization (after a Concat or an Add: onnxsim cannot fold it into a conv)
# ---------------------------------------------------------------------------------------------------------
class NormalizedJoin(nn.Module):
    def __init__(self, join: str, relu: bool) -> None:
        super().__init__()
        self.left = nn.Conv2d(3, 4, 3, padding=1)
        self.right = nn.Conv2d(3, 4, 1)
        channels = 8 if join == "concat" else 4
        self.norm = nn.BatchNorm2d(channels)
        self.join, self.relu = join, relu
        self.head = nn.Conv2d(channels, 3, 1)
        generator = torch.Generator().manual_seed(3)
        with torch.no_grad():
            self.norm.running_mean.copy_(torch.rand(channels, generator=generator) - 0.5)
            self.norm.running_var.copy_(torch.rand(channels, generator=generator) * 2 + 0.1)
            # Negative gammas too: the per-channel multiplier is signed.
            self.norm.weight.copy_(torch.rand(channels, generator=generator) * 3 - 1)
            self.norm.bias.copy_(torch.rand(channels, generator=generator) - 0.5)

    def forward(self, x):
        a, b = self.left(x), self.right(x)
        y = self.norm(torch.cat([a, b], 1) if self.join == "concat" else a + b)
        return self.head(torch.relu(y) if self.relu else y)


@pytest.mark.parametrize(
    ("join", "relu", "scheme"),
    [
        ("concat", True, "per-channel"),
        ("concat", False, "per-channel-asym"),
        ("add", False, "tda4vm"),
    ],
)
def test_unfused_batch_norm_is_a_per_channel_integer_affine(tmp_path, join, relu, scheme):
    built = build(NormalizedJoin(join, relu), tmp_path, scheme)
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(built.float_onnx)).graph.node}
    assert_integer(built.report, "BatchNormalization", "Conv")
    assert built.report.float_count == 0
    assert_matches_onnxruntime(built)
    assert_close_to_float(built)


class ScaledShifted(nn.Module):
    """BatchNorm as tf2onnx writes one it cannot fold: Mul and Add by per-channel constants after a Concat."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(3, 4, 3, padding=1)
        self.right = nn.Conv2d(3, 4, 1)
        generator = torch.Generator().manual_seed(4)
        self.register_buffer("scale", torch.rand(1, 8, 1, 1, generator=generator) * 4 - 1.5)
        self.register_buffer("shift", torch.rand(1, 8, 1, 1, generator=generator) - 0.5)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.head(torch.cat([self.left(x), self.right(x)], 1) * self.scale + self.shift)


@pytest.mark.parametrize("scheme", ["per-channel", "per-channel-asym"])
def test_mul_and_add_by_per_channel_constants_are_integer(tmp_path, scheme):
    built = build(ScaledShifted(), tmp_path, scheme)
    assert {"Mul", "Add"} <= {n.op_type for n in onnx.load(str(built.float_onnx)).graph.node}
    assert_integer(built.report, "Mul", "Add", "Conv")
    assert built.report.float_count == 0
    assert_matches_onnxruntime(built)
    assert_close_to_float(built)


# ---------------------------------------------------------------------------------------------------------
# Pad, Transpose, Reshape: data movement on int8
# ---------------------------------------------------------------------------------------------------------
class Padded(nn.Module):
    """conv -> Pad as the output (a zero Pad before a conv would be folded into the conv's pads)."""

    def __init__(self, **pad) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pad = pad

    def forward(self, x):
        return F.pad(self.conv(x), (1, 2, 2, 0), **self.pad)


PADS = {
    "constant-zero": (dict(mode="constant"), "per-channel"),
    "constant-value-asymmetric": (dict(mode="constant", value=0.7), "per-channel-asym"),
    "reflect": (dict(mode="reflect"), "per-channel"),
    "edge-power-of-two": (dict(mode="replicate"), "tda4vm"),
}


@pytest.mark.parametrize("case", sorted(PADS))
def test_pad_mode_is_integer_and_matches_onnxruntime(tmp_path, case):
    pad, scheme = PADS[case]
    built = build(Padded(**pad), tmp_path, scheme)
    assert "Pad" in {n.op_type for n in onnx.load(str(built.float_onnx)).graph.node}
    assert_integer(built.report, "Pad", "Conv")
    assert built.report.float_count == 0
    assert_matches_onnxruntime(built)


class Shuffled(nn.Module):
    """Channel shuffle (reshape, transpose, reshape) and a spatial transpose between convs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        y = self.conv(x)
        n, c, h, w = y.shape
        y = y.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(y.transpose(2, 3))


def test_transpose_and_reshape_move_int8_data(tmp_path):
    built = build(Shuffled(), tmp_path, "per-channel-asym")
    assert_integer(built.report, "Transpose", "Reshape", "Conv")
    assert built.report.float_count == 0
    assert_matches_onnxruntime(built)


# ---------------------------------------------------------------------------------------------------------
# What cannot be lowered stays float, by name, and the model still runs
# ---------------------------------------------------------------------------------------------------------
def test_instance_norm_stays_float_by_name_between_integer_convs(tmp_path):
    class Normalized(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.norm = nn.InstanceNorm2d(4, affine=True)
            self.head = nn.Conv2d(4, 3, 1)

        def forward(self, x):
            return self.head(self.norm(self.conv(x)))

    built = build(Normalized(), tmp_path)
    assert [node.op_type for node in built.report.float_nodes] == ["InstanceNormalization"]
    assert built.report.float_nodes[0].name in {n.name for n in onnx.load(str(built.qdq_onnx)).graph.node}
    assert_integer(built.report, "Conv")
    assert_matches_onnxruntime(built)


def test_quantized_softmax_over_channels_stays_float_with_its_reason(tmp_path):
    """A QDQ file from another tool may quantize around Softmax: no integer kernel, so it stays float."""
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s_in", "z"], ["x_q"], name="in_q"),
        helper.make_node("DequantizeLinear", ["x_q", "s_in", "z"], ["x"], name="in_dq"),
        helper.make_node("Softmax", ["x"], ["p"], name="class_softmax", axis=1),
        helper.make_node("QuantizeLinear", ["p", "s_out", "z"], ["p_q"], name="out_q"),
        helper.make_node("DequantizeLinear", ["p_q", "s_out", "z"], ["logits"], name="out_dq"),
    ]
    graph = helper.make_graph(
        nodes,
        "softmax_head",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(SHAPE))],
        [
            numpy_helper.from_array(np.array(0.03, np.float32), "s_in"),
            numpy_helper.from_array(np.array(1 / 127, np.float32), "s_out"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
        ],
    )
    path = tmp_path / "softmax.qdq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), str(path))
    mod, report = lower_to_integer(import_qdq(path))
    assert [(n.name, n.op_type) for n in report.float_nodes] == [("class_softmax", "Softmax")]
    assert "softmax" in report.float_nodes[0].reason
    frame = _frames(1, seed=2)[0]
    got = HostModule(build_for_host(mod, tmp_path / "host"))(frame)
    assert np.abs(np.round(got * 127) - np.round(_run_onnx(path, frame) * 127)).max() <= 1


# ---------------------------------------------------------------------------------------------------------
# The DSP partition: new integer ops go where the profile allows, the rest falls back to the ARM core
# ---------------------------------------------------------------------------------------------------------
class Head(nn.Module):
    """All head operators in one net: SE gate, HardSwish, BN after a Concat, reflect Pad, ConvTranspose."""

    def __init__(self) -> None:
        super().__init__()
        self.se = SqueezeExcite()
        self.side = nn.Conv2d(3, 3, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.up = nn.ConvTranspose2d(6, 3, 4, stride=2, padding=1)

    def forward(self, x):
        a = F.hardswish(self.se(x))
        a = F.pad(F.avg_pool2d(a, 2), (1, 0, 1, 0), mode="reflect")[:, :, :6, :8]
        # No ReLU after the BN: the ConvTranspose input keeps a zero point (int16 centring in C too).
        return self.up(self.norm(torch.cat([a, self.side(x)], 1)))


@pytest.fixture(scope="module")
def head_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("head")
    torch.manual_seed(0)  # module-scoped: set up before the per-test seed
    built = build(Head(), folder, "per-channel-asym")
    assert built.report.float_count == 0, built.report.float_nodes
    mod, _ = lower_to_integer(import_qdq(built.qdq_onnx))
    return mod, built


def test_head_ops_on_the_dsp_give_the_same_bits_in_c_as_in_llvm(head_module, tmp_path):
    mod, _ = head_module
    assert 'dtype="int16"' in mod["main"].script()  # the zero-point ConvTranspose path is part of it
    profile = load_profile("tda4vm")
    partitioned, plan = partition_for_dsp(mod, profile.accelerator_ops, profile.max_subgraphs)
    for op in ("relax.nn.conv2d_transpose", "relax.take", "relax.nn.pad", "relax.multiply"):
        assert plan.dsp_op_counts.get(op), (op, plan.dsp_op_counts)
    sources = emit_dsp_sources(partitioned, tmp_path / "c7x")
    check = check_dsp_sources(partitioned, sources, tmp_path / "c7x", profile)
    assert check.bit_exact and check.elements > 0


def test_ops_a_dsp_does_not_list_fall_back_to_the_arm_core(head_module):
    mod, built = head_module
    # A DSP without gathers: the lookup tables (and the resize gathers) must run on the ARM core.
    ops = [op for op in load_profile("tda4vm").accelerator_ops if op not in ("Gather", "Resize")]
    partitioned, plan = partition_for_dsp(mod, ops, 16)
    assert plan.arm_op_counts.get("relax.take") and "relax.take" in plan.unsupported_ops
    assert len(plan.subgraphs) >= 2
    frame = _frames(1, seed=4, shape=built.shape)[0]
    split = relax.VirtualMachine(compile_relax(partitioned, host_target()), tvm.cpu())
    got = split["main"](tvm.runtime.tensor(frame)).numpy()
    np.testing.assert_array_equal(got, built.module(frame))


# ---------------------------------------------------------------------------------------------------------
# QAT: a fine-tuned model with these ops carries a learned range for every tensor the plan quantizes
# ---------------------------------------------------------------------------------------------------------
class QatHead(nn.Module):
    """SiLU, SE gate, HardSwish after conv+BN (QAT fuses it), Mul/Add by constants, BN after a Concat,
    edge Pad, ConvTranspose."""

    def __init__(self) -> None:
        super().__init__()
        self.se = SqueezeExcite()
        self.side = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5))
        self.register_buffer("scale", torch.linspace(-1.0, 2.0, 5).reshape(1, 5, 1, 1))
        self.norm = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)

    def forward(self, x):
        a = F.silu(self.se(x))
        b = F.hardswish(self.side(x)) * self.scale + 0.25
        y = torch.relu(self.norm(torch.cat([a, b], 1)))
        return torch.sigmoid(self.up(F.pad(y, (1, 1, 0, 0), mode="replicate")))


def test_qat_export_of_head_ops_keeps_every_range_and_lowers_to_integer(tmp_path):
    scheme = "per-channel-asym"
    torch.manual_seed(0)
    model = prepare_qat(QatHead().eval(), get_scheme(scheme), SHAPE)
    observe_qat(model, [torch.from_numpy(f) for f in _frames(2, seed=8)])
    path = export_qat_onnx(model.eval(), tmp_path / "qat.onnx")
    result = run_quantize(QuantizeConfig(scheme=get_scheme(scheme), frames=0), path, [], tmp_path / "q")
    assert result.calibrated == ()  # every planned tensor had a range learned by QAT
    mod, report = lower_to_integer(import_qdq(result.qdq_onnx))
    assert report.float_count == 0, report.float_nodes
    assert_integer(report, "Sigmoid", "HardSwish", "Mul", "Add", "BatchNormalization", "ConvTranspose", "Pad")
    built = Built(path, result.qdq_onnx, report, HostModule(build_for_host(mod, tmp_path / "host")), SHAPE)
    assert_matches_onnxruntime(built)


def test_batch_norm_quantized_by_onnxruntime_with_int8_parameters_is_integer(tmp_path):
    """A QDQ file from onnxruntime's quantizer: BN's scale sits behind a DequantizeLinear of int8."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self.frames = iter(_frames(4, seed=1))

        def get_next(self):
            frame = next(self.frames, None)
            return None if frame is None else {"input": frame}

    float_onnx = export(NormalizedJoin("concat", relu=False), tmp_path / "float.onnx")
    qdq = tmp_path / "ort.qdq.onnx"
    quantize_static(
        str(float_onnx),
        str(qdq),
        Frames(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    model = onnx.load(str(qdq))
    norm = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert producers.get(norm.input[1]) == "DequantizeLinear"
    mod, report = lower_to_integer(import_qdq(qdq))
    assert_integer(report, "BatchNormalization")
    assert report.float_count == 0
    built = Built(float_onnx, qdq, report, HostModule(build_for_host(mod, tmp_path / "host")), SHAPE)
    assert_matches_onnxruntime(built)


def test_affine_fixed_point_rounds_like_the_exact_affine_map():
    """(x * M + B) >> S equals round-half-even(x * scale + offset) for every int8 input, any scale/offset."""
    from segcompile.compile.fixed_point import rounding_right_shift
    from segcompile.compile.passes.integer_kernels import affine_fixed_point

    rng = np.random.default_rng(0)
    scale = rng.uniform(-3, 3, 64) * np.exp2(rng.integers(-12, 6, 64))
    offset = rng.normal(0, 200, 64)
    offset[:4] = [1e6, -1e6, 0.0, 100.5]  # saturating offsets are clamped; an exact tie rounds to even
    scale[3] = 0.0
    multiplier, bias, shift = affine_fixed_point(scale, offset, 128)
    x = np.arange(-128, 128, dtype=np.int64)[:, None]
    got = np.clip(rounding_right_shift(x * multiplier + bias, np.int64(shift)), -128, 127)
    exact = np.clip(np.round(x * scale + offset), -128, 127)  # float64, ties to even
    np.testing.assert_array_equal(got, exact)
