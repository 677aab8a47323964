"""The command line as a user meets it: help, version, one-line errors."""

from __future__ import annotations

from click.testing import CliRunner

from segcompile import __version__
from segcompile.cli import main


def test_version_is_printed():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_every_stage_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in (
        "models",
        "build",
        "export",
        "train",
        "quantize",
        "compile",
        "targets",
        "verify",
        "report",
    ):
        assert command in result.output


def test_user_error_is_one_line_without_traceback(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "build",
            "--model",
            "no_such_model",
            "--target",
            "host",
            "--calib",
            "demo:calib",
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "no_such_model" in lines[0]
    assert "Traceback" not in result.output


def test_debug_flag_shows_the_exception(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "--debug",
            "build",
            "--model",
            "no_such_model",
            "--target",
            "host",
            "--calib",
            "demo:calib",
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert result.exit_code != 0
    assert result.exception is not None and "no_such_model" in str(result.exception)


def test_unknown_target_is_named(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "build",
            "--model",
            "demo_mobilenetv2s16_deeplabv3lite_160x128",
            "--target",
            "pdp11",
            "--calib",
            "demo:calib",
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert result.exit_code != 0
    assert "pdp11" in result.output
    assert not (tmp_path / "b" / "manifest.json").exists()
