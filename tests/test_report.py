"""report.md / report.html / the terminal summary / build comparison, from real verify runs."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from verify_builds import BAD_NODE, CALIB_NAMES, make_build, write_scenes

from segcompile.cli import main
from segcompile.data.spec import open_dataset
from segcompile.errors import SegcompileError
from segcompile.report.compare import compare_markdown
from segcompile.report.stage import summary_text, write_report
from segcompile.verify.stage import VerifyConfig, run_verify, run_verify_with_fallback

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def eval_spec(tmp_path_factory) -> str:
    root = write_scenes(tmp_path_factory.mktemp("eval"), "s", range(6))
    return f"folder:{root / 'images'}:{root / 'masks'}"


@pytest.fixture(scope="module")
def verified(tmp_path_factory, eval_spec) -> dict[str, Path]:
    """A good build and a bad build rescued by the fallback, both verified."""
    root = tmp_path_factory.mktemp("builds")
    good, bad = make_build(root / "good"), make_build(root / "bad", activation_outlier=1000.0)
    dataset = open_dataset(eval_spec)
    run_verify(VerifyConfig(), good, dataset, CALIB_NAMES)
    run_verify_with_fallback(VerifyConfig(max_drop=1.0), bad, dataset, CALIB_NAMES)
    return {"good": good, "bad": bad}


def test_html_is_self_contained_and_holds_the_plots(verified):
    paths = write_report(verified["bad"])
    assert [p.name for p in paths] == ["report.md", "report.html"]
    page = (verified["bad"] / "report.html").read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"'](?!data:)", page), "every resource must be inline"
    assert "http://" not in page and "https://" not in page
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page)
    alts = [alt for alt, _ in images]
    # per-class IoU, per-layer SQNR, class legend and one picture per sample frame
    assert "per-class IoU float vs int8" in alts and "per-layer SQNR" in alts
    assert sum(alt.startswith("sample ") for alt in alts) == 3
    assert all(base64.b64decode(data).startswith(PNG_SIGNATURE) for _, data in images)
    assert "Accuracy-aware fallback" in page and BAD_NODE in page


def test_markdown_reads_as_tables(verified):
    write_report(verified["good"])
    text = (verified["good"] / "report.md").read_text()
    report = json.loads((verified["good"] / "report.json").read_text())
    assert f"| float mIoU (%) | {report['float_miou']:.2f} |" in text
    assert f"| int8 mIoU (%) | {report['int8_miou']:.2f} |" in text
    for name in ("gray", "red", "green", "blue"):
        assert re.search(rf"^\| {name} \| [0-9.]+ \| [0-9.]+ \|", text, re.MULTILINE)
    assert "nearest neighbour" in text  # says how masks were resized
    assert "Calibration (8): s100" in text


def test_report_files_are_byte_identical_when_rewritten(verified):
    first = [p.read_bytes() for p in write_report(verified["good"])]
    assert [p.read_bytes() for p in write_report(verified["good"])] == first


def test_summary_fits_one_screen_and_has_the_headline(verified):
    report = json.loads((verified["bad"] / "report.json").read_text())
    text = summary_text(report)
    lines = text.splitlines()
    assert len(lines) <= 20 and max(len(line) for line in lines) <= 120
    assert f"drop {report['miou_drop']:.2f} points" in text
    assert "fallback: 1 layer(s) to float" in text
    assert "gate --max-drop 1.0: passed" in text


def test_compare_puts_builds_side_by_side(verified, tmp_path):
    text = compare_markdown([verified["good"], verified["bad"]])
    assert "|  | good | bad |" in text
    assert "| model | colours | colours |" in text
    assert "| quantization scheme | tda4vm | tda4vm |" in text
    assert "| calibration method | minmax | minmax |" in text
    good = json.loads((verified["good"] / "report.json").read_text())
    bad = json.loads((verified["bad"] / "report.json").read_text())
    assert f"| mIoU drop (points) | {good['miou_drop']:.2f} | {bad['miou_drop']:.2f} |" in text
    assert f"| drop after fallback (points) | - | {bad['fallback']['final_drop']:.2f} |" in text
    outcome = CliRunner().invoke(
        main, ["report", str(verified["good"]), str(verified["bad"]), "--out", str(tmp_path / "cmp")]
    )
    assert outcome.exit_code == 0, outcome.output
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "data:image/png;base64," in page and "https://" not in page


def test_report_command_on_one_build_prints_the_summary(verified):
    outcome = CliRunner().invoke(main, ["report", str(verified["good"])])
    assert outcome.exit_code == 0, outcome.output
    assert "float mIoU 100.00 %" in outcome.output


def test_report_without_report_json_says_what_to_run(tmp_path):
    with pytest.raises(SegcompileError, match="report.json: not found; run `segcompile verify"):
        write_report(tmp_path)
    outcome = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert outcome.exit_code != 0 and "error:" in outcome.output
