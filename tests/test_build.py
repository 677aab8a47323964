"""`segcompile build` end to end on the bundled demo model and data, for the TDA4VM profile."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from segcompile.cli import main
from segcompile.manifest import check_manifest

DEMO = "demo_mobilenetv2s16_deeplabv3lite_160x128"
AARCH64 = 183


def _build(out, *extra):
    args = [
        "build",
        "--model",
        DEMO,
        "--target",
        "tda4vm",
        "--calib",
        "demo:calib",
        "--eval",
        "demo:eval",
        "--frames",
        "16",
        "--eval-frames",
        "24",
        "--out",
        str(out),
        *extra,
    ]
    return CliRunner().invoke(main, args)


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "demo"
    result = _build(out)
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.slow
def test_build_writes_every_artifact_the_design_names(demo_build):
    out, _ = demo_build
    for name in (
        "float.onnx",
        "int8.qdq.onnx",
        "quant_params.json",
        "compile.json",
        "report.json",
        "report.md",
        "report.html",
        "manifest.json",
    ):
        assert (out / name).is_file(), name


@pytest.mark.slow
def test_build_produces_an_aarch64_library_and_dsp_sources(demo_build):
    out, _ = demo_build
    compiled = json.loads((out / "compile.json").read_text())
    libraries = list((out / "a72").glob("*.so"))
    assert libraries, compiled
    header = libraries[0].read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == AARCH64
    assert list((out / "c7x").glob("*.c"))


@pytest.mark.slow
def test_manifest_hashes_match_the_files(demo_build):
    out, _ = demo_build
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target_profile"]["name"] == "tda4vm"
    assert manifest["model"]["name"] == DEMO
    assert {"torch", "onnx", "onnxruntime", "apache-tvm", "segcompile"} <= set(manifest["versions"])
    assert any(
        entry["path"] == "a72/" + p.name for p in (out / "a72").glob("*.so") for entry in manifest["files"]
    )
    assert check_manifest(out) == []


@pytest.mark.slow
def test_report_measures_the_compiled_int8_drop(demo_build):
    out, _ = demo_build
    report = json.loads((out / "report.json").read_text())
    assert report["float_miou"] >= 60.0
    assert report["miou_drop"] <= 1.0
    assert report["frames_calibration"] and report["frames_eval"]
    assert not set(report["frames_eval"]) & set(report["frames_calibration"])


@pytest.mark.slow
def test_rebuilding_with_unchanged_inputs_skips_every_stage(demo_build):
    out, _ = demo_build
    before = (out / "int8.qdq.onnx").read_bytes()
    result = _build(out)
    assert result.exit_code == 0, result.output
    for stage in ("export", "quantize", "compile", "verify"):
        assert f"[{stage}] up to date, skipped" in result.output
    assert (out / "int8.qdq.onnx").read_bytes() == before
    assert check_manifest(out) == []


@pytest.mark.slow
def test_a_tampered_artifact_is_caught_by_the_manifest(demo_build, tmp_path):
    import shutil

    out, _ = demo_build
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "quant_params.json").write_text("{}")
    assert check_manifest(copy) == ["quant_params.json: sha256 differs"]


def test_a_failed_build_leaves_no_manifest(tmp_path):
    out = tmp_path / "broken"
    bad_onnx = tmp_path / "bad.onnx"
    bad_onnx.write_bytes(b"not a model")
    result = CliRunner().invoke(
        main,
        ["build", "--model", str(bad_onnx), "--target", "host", "--calib", "demo:calib", "--out", str(out)],
    )
    assert result.exit_code != 0
    assert "bad.onnx" in result.output
    assert not (out / "manifest.json").exists()
    assert not (out / "float.onnx").exists()
