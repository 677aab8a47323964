"""Bring your own ONNX: files from other exporters (opset 11, dynamic axes, channels-last, binary outputs)."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from byo_models import (
    DUCK,
    ChannelsLastBgrNet,
    DuckProbabilityNet,
    ForeignHeadNet,
    export_opset11_dynamic,
)
from click.testing import CliRunner
from onnx import TensorProto, helper
from PIL import Image
from torch import nn

from segcompile.cli import main
from segcompile.data.preprocess import preprocess
from segcompile.data.spec import open_dataset
from segcompile.errors import SegcompileError
from segcompile.export.config import ExportConfig
from segcompile.export.input_contract import InputContract, parse_input_shape, std_from_options
from segcompile.export.stage import run_export
from segcompile.modelinfo import read_model_info
from segcompile.pipeline import BuildConfig, run_build


class TinySegmenter(nn.Module):
    """Conv -> ReLU -> 1x1 conv -> bilinear upsample: 3 classes, any input size divisible by 2."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.features(x))
        return nn.functional.interpolate(logits, scale_factor=2.0, mode="bilinear", align_corners=False)


def export_legacy(module: nn.Module, path: Path, opset: int = 11, dynamic: bool = True) -> Path:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (torch.zeros(1, 3, 32, 48),), buffer, dynamo=False, opset_version=opset,
            input_names=["pixels"], output_names=["out"],
            dynamic_axes={"pixels": {0: "n", 2: "h", 3: "w"}} if dynamic else None,
        )
    path.write_bytes(buffer.getvalue())
    return path


def one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture(scope="module")
def tiny_opset11(tmp_path_factory) -> Path:
    return export_legacy(TinySegmenter(), tmp_path_factory.mktemp("tiny") / "tiny_opset11.onnx")


# ---- dynamic dimensions and old opsets ------------------------------------------------------------

def test_a_dynamic_input_without_a_shape_is_refused_naming_the_input(tiny_opset11, tmp_path):
    line = one_line_error(["export", "--model", str(tiny_opset11), "--out", str(tmp_path / "b")])
    assert "'pixels'" in line and "height 'h'" in line and "width 'w'" in line
    assert "--input-shape 1,3,H,W" in line
    assert not (tmp_path / "b" / "float.onnx").exists()


def test_input_shape_fixes_dynamic_dimensions_and_old_opsets_are_upgraded(tiny_opset11, tmp_path):
    result = run_export(ExportConfig(model=str(tiny_opset11), input_shape=(1, 3, 64, 96)), tmp_path)
    record = json.loads(result.json_path.read_text())
    assert record["opset"] == 18
    assert any("upgraded opset 11 -> 18" in note for note in record["notes"])
    assert record["input"]["shape"] == [1, 3, 64, 96]
    assert record["output"]["shape"] == [1, 3, 64, 96]
    assert result.info.input_size == (96, 64)
    # The upgraded, fixed-shape model computes what the original does.
    assert result.parity.max_abs_diff < 1e-5


def test_input_shape_that_contradicts_a_static_dimension_is_refused(tmp_path):
    static = export_legacy(TinySegmenter(), tmp_path / "static.onnx", opset=13, dynamic=False)
    expected = r"fixed at 1x3x32x48; --input-shape 1,3,64,48 contradicts axis 2"
    with pytest.raises(SegcompileError, match=expected):
        run_export(ExportConfig(model=str(static), input_shape=(1, 3, 64, 48)), tmp_path / "b")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,3,64", "four positive integers"),
        ("2,3,64,64", "batch must be 1"),
        ("1,4,64,64", "3 colour channels"),
    ],
)
def test_malformed_input_shapes_are_explained(text, message):
    with pytest.raises(SegcompileError, match=message):
        parse_input_shape(text)


# ---- operators nobody supports ----------------------------------------------------------------

def _graph_with(node: onnx.NodeProto, domain_opsets=()) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([node], "g", [x], [y])
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in domain_opsets)]
    return helper.make_model(graph, opset_imports=opsets)


def test_an_operator_tvm_cannot_import_is_one_line_naming_the_node(tmp_path):
    model = _graph_with(helper.make_node("LpNormalization", ["x"], ["y"], name="head/l2norm", axis=1))
    onnx.save(model, tmp_path / "lp.onnx")
    line = one_line_error(["export", "--model", str(tmp_path / "lp.onnx"), "--out", str(tmp_path / "b")])
    assert "node 'head/l2norm'" in line and "LpNormalization" in line


def test_a_custom_domain_operator_is_one_line_naming_the_node(tmp_path):
    node = helper.make_node("FancyUpsample", ["x"], ["y"], name="decoder/up0", domain="com.acme")
    onnx.save(_graph_with(node, ["com.acme"]), tmp_path / "custom.onnx")
    line = one_line_error(["export", "--model", str(tmp_path / "custom.onnx"), "--out", str(tmp_path / "b")])
    assert "node 'decoder/up0'" in line and "com.acme::FancyUpsample" in line


# ---- preprocessing and output options ------------------------------------------------------------

def test_scale_is_the_inverse_of_std_and_not_both():
    assert std_from_options(None, "0.5,0.25,2") == (2.0, 4.0, 0.5)
    assert std_from_options("58", None) == (58.0, 58.0, 58.0)
    with pytest.raises(SegcompileError, match="--std and --scale"):
        std_from_options("58", "0.017")


def test_a_threshold_for_a_multi_class_model_is_refused(tiny_opset11, tmp_path):
    contract = InputContract(threshold=0.3)
    config = ExportConfig(model=str(tiny_opset11), input_shape=(1, 3, 32, 48), contract=contract)
    with pytest.raises(SegcompileError, match="--threshold 0.3: model tiny_opset11 outputs 3-class logits"):
        run_export(config, tmp_path)


def test_preprocessing_options_travel_in_float_onnx(tiny_opset11, tmp_path):
    contract = InputContract(mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0), channel_order="BGR")
    run_export(ExportConfig(model=str(tiny_opset11), input_shape=(1, 3, 32, 48), contract=contract), tmp_path)
    info = read_model_info(onnx.load(tmp_path / "float.onnx"))
    assert (info.mean, info.std, info.channel_order) == ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0), "BGR")
    assert (info.layout, info.output_layout, info.output_kind) == ("NCHW", "NCHW", "logits")


# ---- other frameworks' models, end to end on the demo frames -----------------------------------------

@pytest.fixture(scope="module")
def byo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("byo")


def _build(model: Path, out: Path, target: str, **options) -> dict:
    config = BuildConfig(
        model=str(model), target=target, calib="demo:calib", eval=options.pop("eval", "demo:eval"), out=out,
        calib_frames=16, eval_frames=32, **options,
    )
    run_build(config, echo=lambda _line: None)
    return json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_a_foreign_style_head_compiles_and_verifies_for_tda4vm(byo_dir):
    """Opset 11, dynamic axes, reflect Pad, SE (HardSwish/HardSigmoid/Mul), nearest Resize, unfused BN,
    ConvTranspose learned upsampling: compiled for the TDA4VM profile and verified on held-out frames."""
    model = export_opset11_dynamic(ForeignHeadNet(), byo_dir / "foreign_head.onnx")
    report = _build(model, byo_dir / "foreign_tda4vm", "tda4vm", input_shape=(1, 3, 128, 160))
    # The wrappers keep the trained demo network's function: float mIoU stays where the demo is.
    assert report["float_miou"] > 60.0
    assert report["miou_drop"] < 1.5
    assert report["pixel_agreement"] > 95.0
    compile_record = json.loads((byo_dir / "foreign_tda4vm" / "compile.json").read_text())
    by_op = compile_record["lowering"]["by_op_type"]
    heads = ("ConvTranspose", "HardSigmoid", "Mul", "GlobalAveragePool", "Resize", "BatchNormalization",
             "Pad")
    for op in heads:
        assert by_op[op]["integer"] >= 1 and by_op[op]["float"] == 0, f"{op}: {by_op[op]}"
    manifest = json.loads((byo_dir / "foreign_tda4vm" / "manifest.json").read_text())
    assert manifest["model"]["input_shape"] == [1, 3, 128, 160]
    assert report["per_class"][DUCK]["name"] == "duck"  # an unnamed model takes the labelled frames' names


@pytest.mark.slow
def test_a_channels_last_bgr_model_gets_its_own_preprocessing(byo_dir):
    model = export_opset11_dynamic(ChannelsLastBgrNet(), byo_dir / "nhwc_bgr.onnx", channels_last=True)
    out = byo_dir / "nhwc_bgr"
    report = _build(
        model, out, "host", input_shape=(1, 128, 160, 3),
        contract=InputContract(mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0), channel_order="BGR"),
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preprocessing"]["layout"] == "NHWC"
    assert manifest["preprocessing"]["channel_order"] == "BGR"
    assert manifest["preprocessing"]["std"] == [255.0, 255.0, 255.0]
    assert manifest["output"]["layout"] == "NHWC"
    # The wrapped network sees exactly the pixels the demo network sees: same labels as the zoo model.
    info = read_model_info(onnx.load(out / "float.onnx"))
    zoo = export_opset11_dynamic(ChannelsLastBgrNet().net, byo_dir / "zoo.onnx")
    zoo_session = ort.InferenceSession(str(zoo), providers=["CPUExecutionProvider"])
    ours = ort.InferenceSession(str(out / "float.onnx"), providers=["CPUExecutionProvider"])
    from segcompile.zoo.registry import get_entry

    zoo_info = get_entry("demo_mobilenetv2s16_deeplabv3lite_160x128").model_info()
    frame = open_dataset("demo:eval")[0]
    theirs = zoo_session.run(None, {"image": preprocess(frame.image, zoo_info)})[0]
    mine = ours.run(None, {"input": preprocess(frame.image, info)})[0]
    assert np.array_equal(np.argmax(theirs, axis=1), np.argmax(info.output_as_nchw(mine), axis=1))
    assert report["float_miou"] > 60.0 and report["miou_drop"] < 1.5


@pytest.fixture(scope="module")
def duck_masks(byo_dir) -> str:
    """The demo evaluation frames labelled duck (1) versus everything else (0)."""
    images, masks = byo_dir / "duck" / "images", byo_dir / "duck" / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    evaluation = open_dataset("demo:eval")
    for index in range(32):
        frame = evaluation[index]
        Image.fromarray(frame.image).save(images / f"{frame.name}.png")
        binary = np.where(frame.mask == 255, 255, (frame.mask == DUCK).astype(np.uint8))
        Image.fromarray(binary.astype(np.uint8)).save(masks / f"{frame.name}.png")
    (byo_dir / "duck" / "dataset.yaml").write_text("classes: [background, duck]\n")
    return f"folder:{images}:{masks}"


@pytest.mark.slow
def test_a_one_channel_probability_model_is_thresholded(byo_dir, duck_masks):
    model = export_opset11_dynamic(DuckProbabilityNet(), byo_dir / "duck.onnx")
    out = byo_dir / "duck_build"
    report = _build(
        model, out, "host", eval=duck_masks, input_shape=(1, 3, 128, 160),
        contract=InputContract(threshold=0.5),
    )
    assert [row["name"] for row in report["per_class"]] == ["background", "duck"]
    duck = report["per_class"][1]
    assert duck["float_iou"] > 50.0
    assert abs(duck["float_iou"] - duck["int8_iou"]) < 3.0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["output"] == {
        "kind": "probability", "layout": "NCHW", "threshold": 0.5, "labels": "output > threshold",
    }


# ---- Resize as each opset writes it, through the integer path -----------------------------------------

class ThreeResizes(nn.Module):
    """Nearest (asymmetric/floor), bilinear half-pixel and, from opset 11, bilinear align-corners."""

    def __init__(self, align_corners: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.align_corners = align_corners
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        interpolate = nn.functional.interpolate
        x = interpolate(self.stem(x), scale_factor=2.0, mode="nearest")
        x = interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        logits = self.classifier(x)
        if self.align_corners:
            return interpolate(logits, size=(32, 48), mode="bilinear", align_corners=True)
        return logits


@pytest.mark.parametrize("opset", [10, 11, 13])
def test_resize_from_each_opset_runs_as_integer_code_within_one_lsb_of_onnxruntime(opset, tmp_path):
    from segcompile.compile import HostModule, build_for_host, import_qdq, lower_to_integer
    from segcompile.quantize.stage import QuantizeConfig, run_quantize

    model = ThreeResizes(align_corners=opset >= 11)
    source = export_legacy(model, tmp_path / f"resize{opset}.onnx", opset=opset)
    run_export(ExportConfig(model=str(source), input_shape=(1, 3, 32, 48)), tmp_path)
    info = read_model_info(onnx.load(tmp_path / "float.onnx"))
    frames = [preprocess(open_dataset("demo:calib")[i].image, info) for i in range(4)]
    result = run_quantize(QuantizeConfig(frames=4), tmp_path / "float.onnx", frames, tmp_path)
    module, report = lower_to_integer(import_qdq(result.qdq_onnx))
    resizes = [name for name, op in report.integer_nodes if op == "Resize"]
    assert len(resizes) == (3 if opset >= 11 else 2), report.float_nodes
    library = HostModule(build_for_host(module, tmp_path / "host"))
    session = ort.InferenceSession(str(result.qdq_onnx), providers=["CPUExecutionProvider"])
    qdq = onnx.load(result.qdq_onnx)
    output_dq = next(n for n in qdq.graph.node if n.output[0] == qdq.graph.output[0].name)
    scale = onnx.numpy_helper.to_array(next(i for i in qdq.graph.initializer if i.name == output_dq.input[1]))
    frame = preprocess(open_dataset("demo:eval")[0].image, info)
    ours = library(frame) / scale
    theirs = session.run(None, {"input": frame})[0] / scale
    assert np.mean(np.abs(ours - theirs) <= 1.0 + 1e-3) >= 0.999


# ---- a real third-party model: PaddlePaddle's PP-OCRv4 text detector -------------------------------------

PP_OCR_DET = Path(__file__).resolve().parents[1] / ".cache" / "models" / "ch_PP-OCRv4_det_infer.onnx"


@pytest.mark.slow
def test_paddle_pp_ocr_text_detector_compiles_and_verifies(tmp_path):
    """paddle2onnx, opset 12, dynamic axes, HardSigmoid SE blocks, unfused BN, ConvTranspose, Sigmoid."""
    from text_scenes import write_text_scenes

    assert PP_OCR_DET.is_file(), f"{PP_OCR_DET} missing: run `make setup` (fetch-third-party-models.sh)"
    calib, evaluation = write_text_scenes(tmp_path / "text", 48)
    config = BuildConfig(
        model=str(PP_OCR_DET), target="host", calib=calib, eval=evaluation, out=tmp_path / "build",
        calib_frames=16, input_shape=(1, 3, 128, 160),
        # PaddleOCR feeds OpenCV's BGR frames and binarises the probability map at 0.3.
        contract=InputContract(channel_order="BGR", threshold=0.3),
    )
    run_build(config, echo=lambda _line: None)
    report = json.loads((tmp_path / "build" / "report.json").read_text())
    assert [row["name"] for row in report["per_class"]] == ["background", "text"]
    text = report["per_class"][1]
    assert text["float_iou"] > 40.0  # the detector finds the rendered words
    assert abs(report["miou_drop"]) < 2.0
    assert report["pixel_agreement"] > 97.0
    export_record = json.loads((tmp_path / "build" / "export.json").read_text())
    assert any("upgraded opset 12 -> 18" in note for note in export_record["notes"])


def test_a_conv_whose_weight_is_computed_is_planned_float_instead_of_refused(tmp_path):
    """Some exporters compute weights in the graph (here an Identity in front of the initializer)."""
    from onnx import numpy_helper

    from segcompile.modelinfo import ModelInfo, attach_model_info
    from segcompile.quantize.plan import build_plan
    from segcompile.quantize.stage import QuantizeConfig, run_quantize

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w0")
    nodes = [
        helper.make_node("Identity", ["w0"], ["w"], name="weights/identity"),
        helper.make_node("Conv", ["input", "w"], ["c"], name="head/conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["logits"], name="head/relu"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8, 8])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert build_plan(model).float_ops == {"head/conv": "Conv"}
    attach_model_info(model, ModelInfo(name="computed", num_classes=4, input_size=(8, 8)))
    onnx.save(model, tmp_path / "float.onnx")
    frames = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(2)]
    result = run_quantize(QuantizeConfig(frames=2), tmp_path / "float.onnx", frames, tmp_path)
    session = ort.InferenceSession(str(result.qdq_onnx), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": frames[0]})[0].shape == (1, 4, 8, 8)
