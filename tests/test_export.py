"""The export stage: zoo / checkpoint / factory / ONNX file in, a checked ``float.onnx`` out.

Every round trip runs the real exporter, onnxsim and onnxruntime and compares against the torch
network computed independently here, on a real frame of the bundled demo set.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from segcompile.cli import main
from segcompile.data.preprocess import preprocess
from segcompile.data.spec import open_dataset
from segcompile.errors import SegcompileError
from segcompile.export import ExportConfig, export_fingerprint, is_up_to_date, run_export
from segcompile.modelinfo import read_model_info
from segcompile.zoo import build_model, get_entry

SIZE = (64, 64)  # (width, height): small, and divisible by 32 as the zoo networks need
CLASSES = 4
TOLERANCE = 1e-4

# One zoo entry per architecture family the issue names.
FAMILIES = {
    "mobilenetv2s16+deeplabv3lite": "cityscapes_mobilenetv2s16_deeplabv3lite_768x384",
    "mobilenetv2+fpnlite": "cityscapes_mobilenetv2_fpnlite_768x384",
    "mobilenetv2+unetlite": "cityscapes_mobilenetv2_unetlite_768x384",
    "mobilenetv2w1.4+fpnlite": "ade20k32_mobilenetv2w1.4_fpnlite_512x512",
    "regnetx400mf+fpnlite": "cityscapes_regnetx400mf_fpnlite_768x384",
}
DEMO_MODEL = "demo_mobilenetv2s16_deeplabv3lite_160x128"


class NotAWeight:
    """An arbitrary object: a weights-only checkpoint loader must refuse to unpickle it."""


def trained_like_state(name: str, num_classes: int, seed: int = 7) -> dict[str, torch.Tensor]:
    """A zoo network's state dict with BatchNorm statistics as training leaves them.

    Fresh BatchNorm layers are identities (mean 0, var 1), which would let a broken BN folding pass.
    """
    model = build_model(name, num_classes=num_classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                count = module.num_features
                module.running_mean.copy_(torch.rand(count, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(count, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(count, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(count, generator=generator) - 0.5)
    return model.state_dict()


def onnxruntime_run(path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


@pytest.fixture(scope="module")
def frame():
    """The first calibration frame of the bundled demo scenes: a real image."""
    return open_dataset("demo:calib")[0]


@pytest.fixture(scope="module", params=list(FAMILIES), ids=list(FAMILIES))
def family_export(request, tmp_path_factory, frame):
    """Export each family (trained-like weights from a checkpoint) once; tests inspect the result."""
    name = FAMILIES[request.param]
    folder = tmp_path_factory.mktemp(request.param.replace("+", "_"))
    state = trained_like_state(name, CLASSES)
    checkpoint = folder / "weights.pt"
    torch.save(state, checkpoint)
    config = ExportConfig(
        model=name, checkpoint=str(checkpoint), input_size=SIZE, num_classes=CLASSES,
        sample_image=frame.image, sample_name=frame.name,
    )
    result = run_export(config, folder / "build")
    return name, state, result


def test_round_trip_matches_torch_within_tolerance(family_export, frame):
    name, state, result = family_export
    model = build_model(name, num_classes=CLASSES)
    model.load_state_dict(state)
    batch = preprocess(frame.image, result.info)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(batch)).numpy()
    actual = onnxruntime_run(result.onnx_path, batch)
    assert actual.shape == (1, CLASSES, SIZE[1], SIZE[0])
    assert np.max(np.abs(actual - expected)) <= TOLERANCE
    assert result.parity.max_abs_diff <= TOLERANCE
    assert result.parity.argmax_agreement >= 0.999


def test_export_json_records_parity_versions_and_source(family_export):
    name, _, result = family_export
    record = json.loads(result.json_path.read_text())
    assert record["parity"]["max_abs_diff"] == pytest.approx(result.parity.max_abs_diff)
    assert record["parity"]["reference"] == "torch"
    assert record["parity"]["input_source"].startswith("sample image")
    assert record["source"]["zoo_name"] == name
    assert len(record["source"]["checkpoint_sha256"]) == 64
    assert record["exporter"] == "torch.onnx.export(dynamo=True)"
    assert record["opset"] >= 17
    assert set(record["versions"]) >= {"torch", "onnx", "onnxsim", "onnxruntime"}
    assert record["nodes_after_simplify"] <= record["nodes_before_simplify"]
    assert record["input"] == {"name": "input", "shape": [1, 3, SIZE[1], SIZE[0]]}
    assert record["output"] == {"name": "logits", "shape": [1, CLASSES, SIZE[1], SIZE[0]]}


def test_float_onnx_is_checked_static_and_carries_model_info(family_export):
    name, _, result = family_export
    model = onnx.load(str(result.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    assert max(entry.version for entry in model.opset_import if entry.domain == "") >= 17
    assert [value.name for value in model.graph.input] == ["input"]
    assert [value.name for value in model.graph.output] == ["logits"]
    info = read_model_info(model, str(result.onnx_path))
    assert info.name == name
    assert info.num_classes == CLASSES
    assert info.input_size == SIZE
    assert info.channel_order == "RGB"


def test_node_names_follow_torch_module_paths_and_are_unique(family_export):
    name, state, result = family_export
    nodes = onnx.load(str(result.onnx_path)).graph.node
    names = [node.name for node in nodes]
    assert len(set(names)) == len(names)
    convs = [node for node in nodes if node.op_type == "Conv"]
    # Every conv is named after the torch module whose weight it holds.
    conv_modules = {key[: -len(".weight")] for key in state if key.endswith(".weight")}
    for node in convs:
        module_path, op = node.name.rsplit("/", 1)
        assert op == "Conv"
        assert module_path in conv_modules
    assert not any(name.startswith(("node_", "n0", "val_")) for name in names)


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory, frame):
    """The demo model exported from a checkpoint that names its zoo entry (``--model demo.pt``)."""
    folder = tmp_path_factory.mktemp("demo")
    checkpoint = folder / "demo.pt"
    state = trained_like_state(DEMO_MODEL, 8)
    torch.save({"state_dict": state, "model_name": DEMO_MODEL, "num_classes": 8}, checkpoint)
    config = ExportConfig(model=str(checkpoint), input_size=SIZE, sample_image=frame.image)
    return config, run_export(config, folder / "build")


def test_checkpoint_with_model_name_selects_the_zoo_entry_and_its_classes(demo_export):
    _, result = demo_export
    assert result.info.name == DEMO_MODEL
    assert result.info.class_names == get_entry(DEMO_MODEL).class_names
    assert result.parity.max_abs_diff <= TOLERANCE


def test_exporting_twice_gives_byte_identical_files(demo_export, tmp_path):
    config, first = demo_export
    second = run_export(config, tmp_path / "again")
    assert second.onnx_path.read_bytes() == first.onnx_path.read_bytes()


def test_finished_export_is_up_to_date_until_its_file_changes(demo_export, tmp_path):
    config, first = demo_export
    build = tmp_path / "build"
    shutil.copytree(first.onnx_path.parent, build)
    assert is_up_to_date(config, build)
    assert not is_up_to_date(replace(config, seed=1), build)
    with open(build / "float.onnx", "ab") as handle:
        handle.write(b"\0")
    assert not is_up_to_date(config, build)


def test_checkpoint_loading_refuses_pickled_objects(tmp_path):
    checkpoint = tmp_path / "unsafe.pt"
    torch.save({"state_dict": trained_like_state(DEMO_MODEL, 8), "extra": NotAWeight()}, checkpoint)
    with pytest.raises(SegcompileError, match=r"unsafe\.pt: cannot be read as a weights-only checkpoint"):
        run_export(ExportConfig(model=DEMO_MODEL, checkpoint=str(checkpoint)), tmp_path / "build")
    assert not (tmp_path / "build" / "float.onnx").exists()


def test_checkpoint_for_other_classes_names_the_mismatched_parameter(tmp_path):
    checkpoint = tmp_path / "wrong.pt"
    torch.save(trained_like_state(DEMO_MODEL, 3), checkpoint)
    with pytest.raises(SegcompileError, match=r"wrong\.pt: does not fit .*shape mismatch.*--num-classes"):
        run_export(ExportConfig(model=DEMO_MODEL, checkpoint=str(checkpoint)), tmp_path / "build")


def test_checkpoint_without_model_name_asks_for_name_and_checkpoint(tmp_path):
    checkpoint = tmp_path / "bare.pt"
    torch.save(trained_like_state(DEMO_MODEL, 8), checkpoint)
    with pytest.raises(SegcompileError, match=r"--model NAME --checkpoint FILE"):
        run_export(ExportConfig(model=str(checkpoint)), tmp_path / "build")


def test_factory_model_takes_classes_from_its_output(tmp_path, monkeypatch):
    (tmp_path / "export_factory_tiny.py").write_text(textwrap.dedent("""
        import torch.nn.functional as F
        from torch import nn

        class Tiny(nn.Module):
            def __init__(self, num_classes):
                super().__init__()
                self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
                self.classifier = nn.Conv2d(8, num_classes, 1)

            def forward(self, x):
                return F.interpolate(self.classifier(self.stem(x)), size=x.shape[-2:], mode="bilinear")

        def build(num_classes=3):
            return Tiny(num_classes)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = ExportConfig(factory="export_factory_tiny:build", input_size=(48, 32))
    result = run_export(config, tmp_path / "build")
    assert result.info.num_classes == 3
    assert result.info.input_size == (48, 32)
    names = {node.name for node in onnx.load(str(result.onnx_path)).graph.node}
    assert {"stem.0/Conv", "classifier/Conv"} <= names
    assert result.parity.input_source.startswith("synthetic")
    assert result.parity.max_abs_diff <= TOLERANCE


def test_falls_back_to_the_legacy_exporter_and_says_why(tmp_path, monkeypatch):
    # A branch on tensor values: torch.export cannot trace it, the TorchScript tracer takes one path.
    (tmp_path / "export_factory_branchy.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class Branchy(nn.Module):
            def __init__(self):
                super().__init__()
                self.stem = nn.Conv2d(3, 2, 3, padding=1)

            def forward(self, x):
                y = self.stem(x)
                return y if y.mean() > 0 else -y

        def build():
            torch.manual_seed(0)
            return Branchy()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = ExportConfig(factory="export_factory_branchy:build", input_size=(32, 32))
    result = run_export(config, tmp_path / "build")
    assert "legacy" in result.exporter
    assert any("data-dependent" in note for note in result.notes)
    record = json.loads(result.json_path.read_text())
    assert record["notes"] == list(result.notes)
    assert result.parity.max_abs_diff <= TOLERANCE


# --- ONNX files as input -------------------------------------------------------------------------


def foreign_onnx(path: Path, num_classes: int) -> nn.Module:
    """An ONNX file from another tool: no segcompile metadata, dynamic size, its own tensor names."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1),
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
        torch.onnx.export(
            model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
            input_names=["images"], output_names=["scores"],
            dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}, "scores": {0: "n", 2: "h", 3: "w"}},
        )
    return model


def test_onnx_input_is_fixed_to_the_size_renamed_and_keeps_its_numbers(tmp_path, frame):
    source = tmp_path / "foreign.onnx"
    foreign_onnx(source, num_classes=5)
    result = run_export(ExportConfig(model=str(source), input_size=(96, 64), sample_image=frame.image),
                        tmp_path / "build")
    model = onnx.load(str(result.onnx_path))
    assert [value.name for value in model.graph.input] == ["input"]
    assert [value.name for value in model.graph.output] == ["logits"]
    info = read_model_info(model)
    assert (info.name, info.num_classes, info.input_size) == ("foreign", 5, (96, 64))
    batch = preprocess(frame.image, info)
    np.testing.assert_allclose(onnxruntime_run(result.onnx_path, batch), onnxruntime_run(source, batch),
                               atol=1e-5)
    assert result.parity.max_abs_diff <= 1e-5


def test_onnx_input_with_dynamic_size_needs_input_size(tmp_path):
    source = tmp_path / "foreign.onnx"
    foreign_onnx(source, num_classes=5)
    expected = r"dynamic dimensions \(height 'h', width 'w'\): give --input-shape 1,3,H,W \(or --input-size"
    with pytest.raises(SegcompileError, match=expected):
        run_export(ExportConfig(model=str(source)), tmp_path / "build")


def test_single_channel_onnx_output_is_a_probability_map(tmp_path):
    source = tmp_path / "mask.onnx"
    foreign_onnx(source, num_classes=1)
    result = run_export(ExportConfig(model=str(source), input_size=(32, 32)), tmp_path / "build")
    assert result.info.output_kind == "probability"
    assert result.info.class_names == ("background", "foreground")


def test_reexporting_float_onnx_keeps_its_model_info(tmp_path):
    source = tmp_path / "foreign.onnx"
    foreign_onnx(source, num_classes=5)
    first = run_export(ExportConfig(model=str(source), input_size=(64, 32)), tmp_path / "one")
    second = run_export(ExportConfig(model=str(first.onnx_path)), tmp_path / "two")
    assert second.info == first.info
    assert second.parity.max_abs_diff == 0.0


# --- fingerprint ---------------------------------------------------------------------------------


def test_fingerprint_follows_checkpoint_bytes_and_options(tmp_path):
    checkpoint = tmp_path / "w.pt"
    torch.save(trained_like_state(DEMO_MODEL, 8, seed=1), checkpoint)
    config = ExportConfig(model=DEMO_MODEL, checkpoint=str(checkpoint), input_size=SIZE)
    before = export_fingerprint(config)
    assert export_fingerprint(replace(config)) == before
    assert export_fingerprint(replace(config, input_size=(96, 64))) != before
    assert export_fingerprint(replace(config, sample_image=np.zeros((8, 8, 3), np.uint8))) != before
    torch.save(trained_like_state(DEMO_MODEL, 8, seed=2), checkpoint)
    assert export_fingerprint(config) != before


# --- command line --------------------------------------------------------------------------------


def run_cli(*args: str):
    return CliRunner().invoke(main, ["export", *args])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


def test_cli_missing_model_file(tmp_path):
    missing = tmp_path / "missing.onnx"
    result = run_cli("--model", str(missing), "--out", str(tmp_path / "build"))
    assert_one_line_error(result, str(missing), "not found")
    assert not (tmp_path / "build" / "float.onnx").exists()


def test_cli_missing_checkpoint_file(tmp_path):
    missing = tmp_path / "missing.pt"
    result = run_cli("--model", DEMO_MODEL, "--checkpoint", str(missing), "--out", str(tmp_path / "build"))
    assert_one_line_error(result, str(missing), "not found")
    assert not (tmp_path / "build" / "float.onnx").exists()


@pytest.mark.parametrize("content", [b"definitely not a protobuf\n", b""], ids=["garbage", "empty"])
def test_cli_corrupt_onnx_file(tmp_path, content):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(content)
    result = run_cli("--model", str(corrupt), "--out", str(tmp_path / "build"))
    assert_one_line_error(result, str(corrupt), "ONNX")
    assert not (tmp_path / "build" / "float.onnx").exists()


def test_cli_truncated_onnx_file(tmp_path):
    source = tmp_path / "foreign.onnx"
    foreign_onnx(source, num_classes=5)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    result = run_cli("--model", str(truncated), "--out", str(tmp_path / "build"))
    assert_one_line_error(result, str(truncated), "not a readable ONNX file")
    assert not (tmp_path / "build" / "float.onnx").exists()


def test_cli_unknown_model_name_suggests_close_matches(tmp_path):
    typo = "cityscapes_mobilenetv2_fpnlite_768x385"
    result = run_cli("--model", typo, "--out", str(tmp_path / "build"))
    assert_one_line_error(result, typo, "did you mean", "cityscapes_mobilenetv2_fpnlite_768x384")
    assert not (tmp_path / "build" / "float.onnx").exists()


def test_cli_bad_input_size(tmp_path):
    result = run_cli("--model", DEMO_MODEL, "--input-size", "64by64", "--out", str(tmp_path / "build"))
    assert_one_line_error(result, "--input-size 64by64")


def test_cli_exports_and_prints_location_and_parity(tmp_path):
    source = tmp_path / "foreign.onnx"
    foreign_onnx(source, num_classes=5)
    out = tmp_path / "build"
    result = run_cli("--model", str(source), "--input-size", "64x32", "--calib", "demo:calib",
                     "--out", str(out))
    assert result.exit_code == 0, result.output
    assert str(out / "float.onnx") in result.stdout
    assert "max |diff|" in result.stdout
    record = json.loads((out / "export.json").read_text())
    assert record["parity"]["input_source"].startswith("sample image demo:calib:")
