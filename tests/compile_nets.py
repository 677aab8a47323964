"""Small QDQ models for the target/cross-build tests (not a test module itself).

The float graph is written with onnx.helper (no torch export: it keeps these tests fast) and quantized with
onnxruntime's quantize_static (QDQ, int8 symmetric, per-channel weights) on seeded smooth inputs, the same
format the quantize stage writes. It holds what a segmentation head does -- conv, depthwise conv, ReLU,
residual add, concat, bilinear resize, average pool -- plus a Softmax over channels, which has no integer
kernel (it stays float) and which the DSP profiles do not take, so the partition has an ARM fallback in the
middle of the graph. (A Sigmoid would not do: it is lowered to an integer lookup table.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from segcompile.modelinfo import ModelInfo, attach_model_info

HEIGHT, WIDTH = 8, 12
INPUT_SHAPE = (1, 3, HEIGHT, WIDTH)
NUM_CLASSES = 3


def _conv(rng, name, x, out, cin, cout, k=3, groups=1, pad=1):
    fan_in = cin // groups * k * k
    weight = (rng.standard_normal((cout, cin // groups, k, k)) * (1.5 / np.sqrt(fan_in))).astype(np.float32)
    bias = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(weight, f"{name}.w"), numpy_helper.from_array(bias, f"{name}.b")]
    node = helper.make_node(
        "Conv", [x, f"{name}.w", f"{name}.b"], [out], name=name, pads=[pad] * 4, group=groups
    )
    return node, inits


def float_model(with_softmax: bool = True, seed: int = 0, minimal: bool = False) -> onnx.ModelProto:
    """The float ONNX head described in the module docstring (opset 17, ModelInfo attached).

    ``minimal`` keeps only conv -> relu -> 1x1 conv: the smallest integer program, for per-target builds.
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    if minimal:
        nodes_inits = [
            _conv(rng, "stem", "input", "stem_out", 3, 8),
            (helper.make_node("Relu", ["stem_out"], ["stem_relu"], name="stem_relu"), []),
            _conv(rng, "head", "stem_relu", "logits", 8, NUM_CLASSES, k=1, pad=0),
        ]
        for node, tensors in nodes_inits:
            nodes.append(node)
            inits.extend(tensors)
        return _finish(nodes, inits)

    def add(node_and_inits):
        node, tensors = node_and_inits
        nodes.append(node)
        inits.extend(tensors)

    add(_conv(rng, "stem", "input", "stem_out", 3, 8))
    nodes.append(helper.make_node("Relu", ["stem_out"], ["stem_relu"], name="stem_relu"))
    add(_conv(rng, "dw", "stem_relu", "dw_out", 8, 8, groups=8))
    nodes.append(helper.make_node("Relu", ["dw_out"], ["dw_relu"], name="dw_relu"))
    add(_conv(rng, "pw", "dw_relu", "pw_out", 8, 8, k=1, pad=0))
    nodes.append(helper.make_node("Add", ["pw_out", "stem_relu"], ["res"], name="residual_add"))
    gate_in = "res"
    if with_softmax:
        nodes.append(helper.make_node("Softmax", ["res"], ["gate"], name="gate_softmax", axis=1))
        gate_in = "gate"
    nodes.append(
        helper.make_node(
            "AveragePool", [gate_in], ["pooled"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
        )
    )
    add(_conv(rng, "mid", "pooled", "mid_out", 8, 8))
    nodes.append(helper.make_node("Relu", ["mid_out"], ["mid_relu"], name="mid_relu"))
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up_scales"))
    nodes.append(
        helper.make_node(
            "Resize",
            ["mid_relu", "", "up_scales"],
            ["up"],
            name="upsample",
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        )
    )
    nodes.append(helper.make_node("Concat", ["up", "res"], ["cat"], name="concat", axis=1))
    add(_conv(rng, "head", "cat", "logits", 16, NUM_CLASSES, k=1, pad=0))
    return _finish(nodes, inits)


def _finish(nodes, inits) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "tiny_head",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, NUM_CLASSES, HEIGHT, WIDTH])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    attach_model_info(model, ModelInfo(name="tiny_head", num_classes=NUM_CLASSES, input_size=(WIDTH, HEIGHT)))
    onnx.checker.check_model(model)
    return model


def smooth_inputs(count: int, seed: int = 0) -> list[np.ndarray]:
    """Seeded image-like inputs (smooth gradients, roughly normalized)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    frames = []
    for _ in range(count):
        image = np.empty(INPUT_SHAPE, np.float32)
        for channel in range(3):
            a, b, c = rng.uniform(-1.5, 1.5, 3)
            image[0, channel] = a * xx / WIDTH + b * yy / HEIGHT + c
        frames.append(image)
    return frames


class _Reader(CalibrationDataReader):
    def __init__(self, frames):
        self._frames = iter(frames)

    def get_next(self):
        frame = next(self._frames, None)
        return None if frame is None else {"input": frame}


def qdq_model(path: Path, with_softmax: bool = True, seed: int = 0, minimal: bool = False) -> Path:
    """Write a QDQ int8 model (onnxruntime quantize_static, symmetric, per-channel) to ``path``."""
    float_path = path.with_name(path.stem + ".float.onnx")
    onnx.save(float_model(with_softmax, seed, minimal), str(float_path))
    quantize_static(
        str(float_path),
        str(path),
        _Reader(smooth_inputs(8, seed)),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    model = onnx.load(str(path))
    attach_model_info(model, ModelInfo(name="tiny_head", num_classes=NUM_CLASSES, input_size=(WIDTH, HEIGHT)))
    onnx.save(model, str(path))
    return path
