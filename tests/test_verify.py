"""The verify stage on real build folders: quantize stage + compiled host module, the gate, the fallback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image
from verify_builds import (
    BAD_NODE,
    CALIB_NAMES,
    CALIB_SEEDS,
    HEIGHT,
    WIDTH,
    make_build,
    normalise,
    quantize_with_onnxruntime,
    scene,
    write_scenes,
)

from segcompile.cli import main
from segcompile.data.spec import open_dataset
from segcompile.errors import SegcompileError
from segcompile.modelinfo import ModelInfo, attach_model_info
from segcompile.verify.fallback import RankedLayer, rank_by_sensitivity, rank_by_sqnr, run_fallback
from segcompile.verify.qdq_layers import QdqGraph, strip_quantization
from segcompile.verify.stage import VerifyConfig, run_verify, run_verify_with_fallback

EVAL_SEEDS = range(0, 10)
CALIB_OVERLAP = range(100, 102)  # two of the calibration frames, mixed into the eval folder
MIX_MACS = 8 * 8 * HEIGHT * WIDTH  # the 1x1 8 -> 8 conv
CLASSIFIER_MACS = 8 * 4 * HEIGHT * WIDTH  # the 1x1 8 -> 4 conv


@pytest.fixture(scope="module")
def eval_spec(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("eval")
    write_scenes(root, "s", EVAL_SEEDS)
    write_scenes(root, "s", CALIB_OVERLAP)
    return f"folder:{root / 'images'}:{root / 'masks'}"


@pytest.fixture(scope="module")
def calib_spec(tmp_path_factory) -> str:
    root = write_scenes(tmp_path_factory.mktemp("calib"), "s", CALIB_SEEDS)
    return f"folder:{root / 'images'}:{root / 'masks'}"


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    """Quantized by the quantize stage (tda4vm scheme) and built for the host like the compile stage does,
    so int8 is judged by the compiled integer program. "bad" has one conv whose output range is
    dominated by an outlier channel."""
    root = tmp_path_factory.mktemp("builds")
    return {
        "good": make_build(root / "good", compiled=True),
        "bad": make_build(root / "bad", activation_outlier=1000.0, compiled=True),
    }


@pytest.fixture
def good_build(builds, tmp_path) -> Path:
    return Path(shutil.copytree(builds["good"], tmp_path / "good"))


@pytest.fixture
def bad_build(builds, tmp_path) -> Path:
    return Path(shutil.copytree(builds["bad"], tmp_path / "bad"))


def test_report_json_has_the_design_fields(good_build, eval_spec):
    result = run_verify(VerifyConfig(), good_build, open_dataset(eval_spec), CALIB_NAMES)
    report = json.loads((good_build / "report.json").read_text())
    # The hand-built classifier is exact in float; per-tensor int8 barely moves it.
    assert report["float_miou"] == pytest.approx(100.0)
    assert 0.0 <= report["miou_drop"] < 1.0
    assert report["miou_drop"] == pytest.approx(report["float_miou"] - report["int8_miou"], abs=1e-3)
    assert report["pixel_agreement"] > 99.0
    assert [c["name"] for c in report["per_class"]] == ["gray", "red", "green", "blue"]
    assert all(c["float_iou"] == pytest.approx(100.0) for c in report["per_class"])
    assert report["units"]["miou"] == "percent"
    # calibration frames are named and kept out of the evaluation
    assert report["frames_calibration"] == CALIB_NAMES
    assert report["frames_eval"] == [f"s{s:03d}" for s in EVAL_SEEDS]
    assert report["frames_excluded_overlap"] == ["s100", "s101"]
    # per quantized activation, worst first, from quant_params.json
    sqnr = [layer["sqnr_db"] for layer in report["layers"]]
    assert {"expand_relu", "mixed", "logits"} <= {layer["name"] for layer in report["layers"]}
    assert sqnr == sorted(sqnr)
    assert report["timings"]["verify"] > 0
    # the compiled integer module ran int8; onnxruntime on the QDQ model is scored alongside
    assert report["int8_runner"] == result.int8_runner == "tvm-host"
    assert report["comparison"]["runner"] == "onnxruntime-qdq"
    assert abs(report["comparison"]["miou"] - report["int8_miou"]) < 0.5
    assert result.report_path == good_build / "report.json"
    assert len(report["samples"]) == 3
    assert all((good_build / s["int8"]).is_file() for s in report["samples"])


def test_confusion_in_the_report_reproduces_the_headline(good_build, eval_spec):
    from segcompile.verify.metrics import miou_from_confusion

    run_verify(VerifyConfig(int8_runner="onnxruntime-qdq"), good_build, open_dataset(eval_spec))
    report = json.loads((good_build / "report.json").read_text())
    int8 = np.array(report["confusion"]["int8"])
    assert 100 * miou_from_confusion(int8) == pytest.approx(report["int8_miou"], abs=1e-3)


def test_verify_is_deterministic(good_build, eval_spec):
    dataset = open_dataset(eval_spec)
    run_verify(VerifyConfig(max_frames=4), good_build, dataset)
    first = json.loads((good_build / "report.json").read_text())
    samples = {p.name: p.read_bytes() for p in (good_build / "verify_samples").iterdir()}
    run_verify(VerifyConfig(max_frames=4), good_build, dataset)
    second = json.loads((good_build / "report.json").read_text())
    first.pop("timings"), second.pop("timings")  # wall-clock seconds are the only thing that may differ
    assert first == second
    assert samples == {p.name: p.read_bytes() for p in (good_build / "verify_samples").iterdir()}


def test_evaluation_set_made_only_of_calibration_frames_is_refused(good_build, calib_spec):
    with pytest.raises(SegcompileError, match="used for calibration"):
        run_verify(VerifyConfig(), good_build, open_dataset(calib_spec), CALIB_NAMES)


def test_missing_float_model_names_the_file(tmp_path, eval_spec):
    with pytest.raises(SegcompileError, match=r"float\.onnx: not found"):
        run_verify(VerifyConfig(), tmp_path, open_dataset(eval_spec))


def test_asking_for_the_compiled_module_of_an_uncompiled_build_says_what_to_run(tmp_path, eval_spec):
    build = make_build(tmp_path / "plain", quantizer="onnxruntime")
    with pytest.raises(SegcompileError, match="no x86_64 host build found.*segcompile compile"):
        run_verify(VerifyConfig(int8_runner="tvm-host"), build, open_dataset(eval_spec))


def test_masks_labelled_for_other_classes_are_refused(good_build, tmp_path):
    root = write_scenes(tmp_path / "other", "o", range(2))
    (root / "dataset.yaml").write_text("classes: [road, sidewalk, building, wall]\n")
    with pytest.raises(SegcompileError, match="classes \\(road, sidewalk.*differ from the model's \\(gray"):
        run_verify(VerifyConfig(), good_build, open_dataset(f"folder:{root / 'images'}:{root / 'masks'}"))


def test_frames_without_masks_give_agreement_but_no_miou(good_build, tmp_path):
    root = write_scenes(tmp_path / "unlabelled", "u", range(3))
    result = run_verify(
        VerifyConfig(int8_runner="onnxruntime-qdq"), good_build, open_dataset(f"folder:{root / 'images'}")
    )
    assert result.float_miou is None and result.miou_drop is None
    assert result.pixel_agreement > 99.0
    with pytest.raises(SegcompileError, match="could not be measured"):
        from segcompile.verify.gate import check_gate

        check_gate(float("nan"), 1.0)


def test_binary_probability_model_is_scored_with_its_threshold(tmp_path):
    # One output channel: sigmoid(4 * (red - green) - 4), foreground = the red class of the scenes.
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.array([[[[4.0]], [[-4.0]], [[0.0]]]], np.float32), "w")
    bias = numpy_helper.from_array(np.array([-4.0], np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w", "b"], ["score"], name="score_conv"),
            helper.make_node("Sigmoid", ["score"], ["prob"], name="sigmoid"),
        ],
        "binary",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, HEIGHT, WIDTH])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 1, HEIGHT, WIDTH])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    attach_model_info(
        model,
        ModelInfo(
            name="red",
            num_classes=1,
            input_size=(WIDTH, HEIGHT),
            class_names=("red",),
            mean=(128.0,) * 3,
            std=(64.0,) * 3,
            output_kind="probability",
            threshold=0.5,
        ),
    )
    build = tmp_path / "build"
    build.mkdir()
    onnx.save(model, str(build / "float.onnx"))
    quantize_with_onnxruntime(build / "float.onnx", build / "int8.qdq.onnx")
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    for seed in range(4):
        image, mask = scene(seed)
        binary = np.where(mask == 255, 255, (mask == 1).astype(np.uint8)).astype(np.uint8)
        Image.fromarray(image).save(tmp_path / "data" / "images" / f"b{seed}.png")
        Image.fromarray(binary).save(tmp_path / "data" / "masks" / f"b{seed}.png")
    dataset = open_dataset(f"folder:{tmp_path / 'data' / 'images'}:{tmp_path / 'data' / 'masks'}")
    result = run_verify(VerifyConfig(), build, dataset)
    assert [c["name"] for c in result.report["per_class"]] == ["background", "red"]
    assert result.float_miou == pytest.approx(100.0)
    assert result.report["model_info"]["threshold"] == 0.5


def test_gate_exit_code_and_message(bad_build, good_build, eval_spec, calib_spec):
    runner = CliRunner()
    failed = runner.invoke(
        main,
        [
            "verify",
            str(bad_build),
            "--eval",
            eval_spec,
            "--calib",
            calib_spec,
            "--max-drop",
            "1.0",
            "--no-report",
        ],
    )
    assert failed.exit_code == 3, failed.output
    assert "exceeds --max-drop 1.00 by" in failed.output
    report = json.loads((bad_build / "report.json").read_text())
    assert f"by {report['miou_drop'] - 1.0:.2f} points" in failed.output
    assert report["frames_calibration"] == CALIB_NAMES  # --calib names them
    passed = runner.invoke(
        main, ["verify", str(good_build), "--eval", eval_spec, "--max-drop", "1.0", "--no-report"]
    )
    assert passed.exit_code == 0, passed.output
    assert "gate --max-drop 1.0: passed" in passed.output


def test_sensitivity_pass_ranks_the_bad_layer_first(bad_build):
    inputs = [normalise(scene(seed)[0]) for seed in range(3)]
    ranking = rank_by_sensitivity(bad_build / "float.onnx", bad_build / "int8.qdq.onnx", inputs)
    assert ranking[0].node == BAD_NODE
    assert ranking[0].sqnr_db < 10.0 < 30.0 < ranking[1].sqnr_db
    assert ranking[0].macs == MIX_MACS


def test_sqnr_ranking_follows_quant_params_and_misses_a_range_outlier(bad_build):
    params = json.loads((bad_build / "quant_params.json").read_text())
    local = {t["name"]: t["sqnr_local_db"] for t in params["tensors"] if t.get("sqnr_local_db") is not None}
    ranking = rank_by_sqnr(bad_build / "int8.qdq.onnx", params)
    assert [r.sqnr_db for r in ranking] == sorted(local[r.tensor] for r in ranking)
    # The outlier channel dominates the power of the bad tensor, so its own SQNR looks fine: the
    # reason the default ranking is the sensitivity pass.
    assert ranking[0].node != BAD_NODE


def test_float_layer_keeps_the_others_quantized(bad_build):
    qdq = onnx.load(str(bad_build / "int8.qdq.onnx"))
    stripped = strip_quantization(qdq, onnx.load(str(bad_build / "float.onnx")), [BAD_NODE])
    onnx.checker.check_model(stripped)
    layers = {layer.node for layer in QdqGraph(stripped).layers}
    assert BAD_NODE not in layers
    assert "expand_conv" in layers


def test_stripping_every_layer_gives_back_the_float_model(bad_build):
    # The tda4vm scheme applies cross-layer equalization, so float.onnx weights are in another frame
    # than the int8 graph's; the fallback must take them from an equally transformed copy.
    import onnxruntime as ort

    from segcompile.verify.fallback import float_twins
    from segcompile.verify.qdq_layers import INPUT_LAYER

    params = json.loads((bad_build / "quant_params.json").read_text())
    assert params["equalization"]["applied"]
    qdq = onnx.load(str(bad_build / "int8.qdq.onnx"))
    everything = [layer.node for layer in QdqGraph(qdq).layers] + [INPUT_LAYER]
    naive_notes: list[str] = []
    strip_quantization(qdq, onnx.load(str(bad_build / "float.onnx")), everything, notes=naive_notes)
    assert len(naive_notes) == 3  # plain float.onnx weights do not fit: int8-rounded values kept
    notes: list[str] = []
    stripped = strip_quantization(qdq, float_twins(bad_build / "float.onnx", params), everything, notes=notes)
    assert notes == []
    x = normalise(scene(3)[0])
    reference = ort.InferenceSession(str(bad_build / "float.onnx")).run(None, {"input": x})[0]
    restored = ort.InferenceSession(stripped.SerializeToString()).run(None, {"input": x})[0]
    np.testing.assert_allclose(restored, reference, rtol=1e-4, atol=1e-3)


def test_fallback_reduces_the_drop_on_a_model_with_one_bad_layer(bad_build, eval_spec):
    config = VerifyConfig(max_drop=1.0)
    result, fallback = run_verify_with_fallback(config, bad_build, open_dataset(eval_spec), CALIB_NAMES)
    assert result.miou_drop > 10.0  # the bad layer really is bad
    assert fallback is not None and fallback.passed
    assert fallback.final.excluded == (BAD_NODE,)
    assert fallback.final.miou_drop < 1.0 < result.miou_drop
    # the accepted candidate was compiled and judged by the compiled module, like the original
    assert result.int8_runner == "tvm-host"
    assert (fallback.final.build_dir / "host" / "model.so").is_file()
    candidate_report = json.loads((fallback.final.build_dir / "report.json").read_text())
    assert candidate_report["int8_runner"] == "tvm-host"
    assert candidate_report["miou_drop"] == pytest.approx(fallback.final.miou_drop, abs=1e-3)
    report = json.loads((bad_build / "report.json").read_text())
    assert report["fallback"]["layers_moved"] == [BAD_NODE]
    # its consumer reads a float tensor and runs in float too; the cost counts both
    assert report["fallback"]["float_nodes"] == ["classifier", BAD_NODE]
    assert report["fallback"]["macs_moved"] == MIX_MACS + CLASSIFIER_MACS
    assert report["fallback"]["accepted_build"] == "fallback/step-01"
    assert report["fallback"]["screened_by"] == "onnxruntime-qdq"
    assert report["fallback"]["confirmed_by"] == "tvm-host"
    assert report["gate"]["passed"] is True


def test_fallback_through_the_cli_passes_the_gate(bad_build, eval_spec):
    outcome = CliRunner().invoke(
        main,
        ["verify", str(bad_build), "--eval", eval_spec, "--max-drop", "1.0", "--fallback", "--no-report"],
    )
    assert outcome.exit_code == 0, outcome.output
    assert "fallback: 1 layer(s) to float" in outcome.output
    assert f"    {BAD_NODE}\n" in outcome.output
    assert "accepted build: fallback/step-01/" in outcome.output


def test_fallback_drives_any_requantizer(tmp_path, eval_spec):
    # The pipeline may plug in its own re-quantization: here onnxruntime's quantizer with
    # nodes_to_exclude, on a conv whose one huge weight crushes the others under per-tensor scaling.
    build = make_build(tmp_path / "weights", outlier=300.0, quantizer="onnxruntime")
    calls = []

    def requantize(excluded: tuple[str, ...]) -> Path:
        calls.append(excluded)
        candidate = build / "candidates" / str(len(calls))
        candidate.mkdir(parents=True)
        shutil.copyfile(build / "float.onnx", candidate / "float.onnx")
        quantize_with_onnxruntime(candidate / "float.onnx", candidate / "int8.qdq.onnx", exclude=excluded)
        return candidate

    config = VerifyConfig(max_drop=1.0, compare_qdq=False)
    result, fallback = run_verify_with_fallback(config, build, open_dataset(eval_spec), requantize=requantize)
    assert result.int8_runner == "onnxruntime-qdq" and result.miou_drop > 10.0
    assert calls == [(BAD_NODE,)]
    assert fallback.passed and fallback.final.miou_drop < 1.0
    assert fallback.final.float_nodes == (BAD_NODE,)  # onnxruntime keeps the consumer in int8


def _ranked(*names: str) -> list[RankedLayer]:
    return [RankedLayer(name, name, float(i), 10, "sensitivity") for i, name in enumerate(names)]


def test_fallback_loop_stops_at_the_first_candidate_within_budget(tmp_path):
    drops = {("a",): 3.0, ("a", "b"): 0.5, ("a", "b", "c"): 0.1}
    result = run_fallback(
        _ranked("a", "b", "c"),
        lambda ex: tmp_path / "-".join(ex),
        lambda path: (50.0, drops[tuple(path.name.split("-"))]),
        1.0,
        4.0,
        100,
    )
    assert result.passed and result.final.excluded == ("a", "b")
    assert [s.excluded for s in result.steps] == [("a",), ("a", "b")]


def test_fallback_that_never_helps_reports_no_change(tmp_path):
    result = run_fallback(
        _ranked("a", "b"),
        lambda ex: tmp_path / "-".join(ex),
        lambda path: (40.0, 5.0),
        1.0,
        4.0,
        100,
        max_layers=2,
    )
    assert not result.passed and result.final is None
    assert result.to_json()["layers_moved"] == [] and result.to_json()["final_drop"] == 4.0


@pytest.mark.slow
def test_aarch64_build_under_qemu_scores_like_the_host_build(builds, tmp_path, eval_spec):
    from segcompile.compile.stage import CompileConfig, run_compile

    build = Path(shutil.copytree(builds["good"], tmp_path / "arm"))
    shutil.rmtree(build / "host")
    run_compile(CompileConfig(check_dsp_c=False), build / "int8.qdq.onnx", "aarch64", build)
    dataset = open_dataset(eval_spec)
    on_arm = run_verify(
        VerifyConfig(int8_runner="tvm-aarch64-qemu", max_frames=3, compare_qdq=False), build, dataset
    )
    on_host = run_verify(
        VerifyConfig(int8_runner="tvm-host", max_frames=3, compare_qdq=False), build, dataset
    )
    assert on_arm.int8_runner == "tvm-aarch64-qemu" and on_host.int8_runner == "tvm-host"
    assert on_arm.report["confusion"] == on_host.report["confusion"]
    assert on_arm.pixel_agreement == on_host.pixel_agreement
