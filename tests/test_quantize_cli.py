"""`segcompile quantize` on the command line, with the bundled demo calibration frames."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from quantize_nets import tiny_onnx, tiny_qat_onnx

from segcompile.cli import main


@pytest.fixture(scope="module")
def float_onnx(tmp_path_factory):
    return tiny_onnx(tmp_path_factory)


def test_quantize_command_writes_both_artifacts(float_onnx, tmp_path):
    out = tmp_path / "build"
    result = CliRunner().invoke(
        main,
        [
            "quantize",
            str(float_onnx),
            "--calib",
            "demo:calib",
            "--scheme",
            "tda4vm",
            "--method",
            "percentile",
            "--frames",
            "3",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "calibrated" in result.output and "over 3 frame(s)" in result.output
    params = json.loads((out / "quant_params.json").read_text())
    assert params["frames"] == 3 and params["method"] == "percentile" and params["scheme"]["name"] == "tda4vm"
    assert (out / "int8.qdq.onnx").stat().st_size > 0


def test_target_profile_supplies_the_scheme(float_onnx, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "quantize",
            str(float_onnx),
            "--calib",
            "demo:calib",
            "--target",
            "tda4vm",
            "--frames",
            "2",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    scheme = json.loads((tmp_path / "quant_params.json").read_text())["scheme"]
    assert scheme["power_of_2"] and scheme["weight_granularity"] == "per-tensor"


def test_float_model_without_calibration_data_is_a_one_line_error(float_onnx, tmp_path):
    result = CliRunner().invoke(main, ["quantize", str(float_onnx), "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "error: --calib is required" in result.output


def test_unknown_scheme_is_a_one_line_error(float_onnx, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "quantize",
            str(float_onnx),
            "--calib",
            "demo:calib",
            "--scheme",
            "tda5",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code != 0 and "unknown quantization scheme 'tda5'" in result.output


def test_qat_model_needs_no_calibration_and_says_what_it_kept(tmp_path_factory, tmp_path):
    _, qat_onnx = tiny_qat_onnx(tmp_path_factory, "per-channel-asym")
    result = CliRunner().invoke(
        main, ["quantize", str(qat_onnx), "--scheme", "tda4vm", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "kept 13 range(s) from the input's QDQ nodes" in result.output
    assert "adjusted to tda4vm" in result.output and "calibrated 0 tensor(s)" in result.output
