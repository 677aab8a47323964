"""Small real build folders for the verify/report tests (not a test module itself).

The network is a hand-built colour classifier (1x1 convs: [x, -x, 1, 0] -> ReLU -> x and a constant
-> per-class logits 2*mu.x - |mu|^2), so its float accuracy on the synthetic scenes is known and
exact. With ``outlier`` > 0 the middle conv gets one huge weight on an input channel that is always
zero: harmless in float, but per-tensor int8 weight quantization then rounds every other weight
of that conv to zero — one bad layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from PIL import Image

from segcompile.modelinfo import ModelInfo, attach_model_info

COLOURS = {  # class id -> RGB
    0: (128, 128, 128),
    1: (200, 50, 40),
    2: (40, 190, 60),
    3: (50, 60, 210),
}
CLASS_NAMES = ("gray", "red", "green", "blue")
MEAN, STD = (128.0, 128.0, 128.0), (64.0, 64.0, 64.0)
WIDTH, HEIGHT = 16, 12
BAD_NODE = "mix_conv"
CALIB_SEEDS = range(100, 108)
CALIB_NAMES = [f"s{seed:03d}" for seed in CALIB_SEEDS]


def model_info(name: str = "colours") -> ModelInfo:
    return ModelInfo(
        name=name, num_classes=4, input_size=(WIDTH, HEIGHT), class_names=CLASS_NAMES, mean=MEAN, std=STD
    )


def _conv(name: str, x: str, out: str, weight: np.ndarray, bias: np.ndarray):
    w = numpy_helper.from_array(weight.astype(np.float32)[:, :, None, None], f"{name}.weight")
    b = numpy_helper.from_array(bias.astype(np.float32), f"{name}.bias")
    return helper.make_node("Conv", [x, w.name, b.name], [out], name=name), [w, b]


def colour_classifier(
    outlier: float = 0.0, info: ModelInfo | None = None, activation_outlier: float = 0.0
) -> onnx.ModelProto:
    """The float ONNX colour classifier (opset 17) with ModelInfo attached.

    ``outlier``: one huge weight of the middle conv on an always-zero input channel (per-tensor weight
    quantization rounds the other weights to zero). ``activation_outlier``: one output channel of the
    middle conv is that constant and nothing reads it (per-tensor activation quantization then
    rounds the useful channels to zero).
    """
    mu = np.array([[(c - m) / s for c, m, s in zip(COLOURS[k], MEAN, STD, strict=True)] for k in range(4)])
    w1 = np.zeros((8, 3))
    w1[0:3] = np.eye(3)
    w1[3:6] = -np.eye(3)
    b1 = np.array([0, 0, 0, 0, 0, 0, 1.0, -100.0])  # channel 6 = 1, channel 7 = relu(-100) = 0
    w2 = np.zeros((8, 8))
    w2[0:3, 0:3] = np.eye(3)
    w2[0:3, 3:6] = -np.eye(3)
    w2[3, 6] = 1.0
    w2[0, 7] = outlier  # multiplies a channel that is always 0
    b2 = np.zeros(8)
    b2[4] = activation_outlier  # channel 4 of the middle conv's output; the classifier ignores it
    w3 = np.zeros((4, 8))
    w3[:, 0:3] = 2 * mu
    w3[:, 3] = -(mu**2).sum(axis=1)
    b3 = np.zeros(4)
    nodes, inits = [], []
    for node, tensors in (
        _conv("expand_conv", "input", "expand", w1, b1),
        (helper.make_node("Relu", ["expand"], ["expand_relu"], name="expand_relu"), []),
        _conv(BAD_NODE, "expand_relu", "mixed", w2, b2),
        _conv("classifier", "mixed", "logits", w3, b3),
    ):
        nodes.append(node)
        inits += tensors
    graph = helper.make_graph(
        nodes,
        "colours",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, HEIGHT, WIDTH])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, HEIGHT, WIDTH])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    attach_model_info(model, info or model_info())
    onnx.checker.check_model(model)
    return model


def scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A frame of coloured rectangles with pixel noise, its class mask, and an ignored border pixel."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    for _ in range(4):
        x0, y0 = rng.integers(0, WIDTH - 4), rng.integers(0, HEIGHT - 4)
        mask[y0 : y0 + rng.integers(3, 8), x0 : x0 + rng.integers(3, 10)] = rng.integers(1, 4)
    palette = np.array([COLOURS[k] for k in range(4)], dtype=np.float64)
    image = palette[mask] + rng.normal(0, 8, (HEIGHT, WIDTH, 3))
    mask[0, 0] = 255
    return np.clip(image, 0, 255).round().astype(np.uint8), mask


def write_scenes(root: Path, prefix: str, seeds: range) -> Path:
    """Write ``images/`` and ``masks/`` PNGs of the synthetic scenes; returns ``root``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        image, mask = scene(seed)
        Image.fromarray(image).save(root / "images" / f"{prefix}{seed:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{prefix}{seed:03d}.png")
    return root


def normalise(image: np.ndarray) -> np.ndarray:
    return ((image.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)).transpose(2, 0, 1)[None]


class _Reader(CalibrationDataReader):
    def __init__(self, seeds: range) -> None:
        self._inputs = iter([{"input": normalise(scene(s)[0])} for s in seeds])

    def get_next(self):
        return next(self._inputs, None)


def quantize_with_onnxruntime(float_onnx: Path, out: Path, exclude: tuple[str, ...] = ()) -> Path:
    """Per-tensor symmetric int8 QDQ (the tda4vm-like scheme) with onnxruntime's quantizer."""
    quantize_static(
        str(float_onnx),
        str(out),
        _Reader(CALIB_SEEDS),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=False,
        nodes_to_exclude=list(exclude),
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    return out


def make_build(
    build_dir: Path,
    outlier: float = 0.0,
    activation_outlier: float = 0.0,
    compiled: bool = False,
    quantizer: str = "segcompile",
) -> Path:
    """A build folder: float.onnx, then int8.qdq.onnx (+ quant_params.json) from the quantize stage.

    ``quantizer="segcompile"`` runs our quantize stage with the tda4vm scheme (power-of-2 per-tensor)
    on the 8 calibration scenes; ``"onnxruntime"`` uses onnxruntime's quantizer (no quant_params.json).
    ``compiled`` also lowers the QDQ model to the integer program and builds it for the host
    (``host/model.so``), as the compile stage does.
    """
    from segcompile.quantize.scheme import PRESETS
    from segcompile.quantize.stage import QuantizeConfig, run_quantize
    from segcompile.verify.fallback import build_host_library

    build_dir.mkdir(parents=True, exist_ok=True)
    float_onnx = build_dir / "float.onnx"
    onnx.save(colour_classifier(outlier, activation_outlier=activation_outlier), str(float_onnx))
    if quantizer == "segcompile":
        calib = [normalise(scene(seed)[0]) for seed in CALIB_SEEDS]
        run_quantize(
            QuantizeConfig(scheme=PRESETS["tda4vm"], frames=len(calib), progress=False),
            float_onnx,
            calib,
            build_dir,
        )
    else:
        quantize_with_onnxruntime(float_onnx, build_dir / "int8.qdq.onnx")
    if compiled:
        build_host_library(build_dir / "int8.qdq.onnx", build_dir / "host")
    return build_dir
