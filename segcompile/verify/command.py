"""``segcompile verify``: float vs int8 mIoU of a build folder, with an optional accuracy gate."""

from __future__ import annotations

from pathlib import Path

import click

from segcompile.report.assemble import calibration_count, read_json
from segcompile.verify.fallback import RANKINGS
from segcompile.verify.gate import check_gate
from segcompile.verify.runners import INT8_KINDS


@click.command("verify")
@click.argument("build_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--eval", "eval_spec", required=True, metavar="DATA",
              help="Evaluation frames: demo:eval, folder:IMAGES:MASKS or a directory.")
@click.option("--calib", "calib_spec", default=None, metavar="DATA",
              help="The calibration data given to quantize: its frames are named in the report and "
                   "kept out of the evaluation.")
@click.option("--frames", type=int, default=None, help="Use at most the first N held-out frames.")
@click.option("--int8-runner", type=click.Choice(INT8_KINDS), default="auto", show_default=True,
              help="What runs int8 (auto: the compiled host module if built, else onnxruntime QDQ).")
@click.option("--compare-qdq/--no-compare-qdq", default=True, show_default=True,
              help="Also score onnxruntime on int8.qdq.onnx when int8 runs compiled code.")
@click.option("--allow-overlap", is_flag=True, help="Evaluate on frames that calibration also used.")
@click.option("--max-drop", type=float, default=None, metavar="POINTS",
              help="Fail (exit 3) when float minus int8 mIoU exceeds POINTS percent points.")
@click.option("--fallback", is_flag=True,
              help="With --max-drop: move the worst layers out of int8 until the drop fits.")
@click.option("--rank", type=click.Choice(RANKINGS), default="sensitivity", show_default=True,
              help="How --fallback ranks layers: a quick sensitivity pass, or the quantize stage's SQNR.")
@click.option("--fallback-max-layers", type=click.IntRange(min=1), default=8, show_default=True,
              help="Give up after moving this many layers out of int8.")
@click.option("--samples", type=int, default=3, show_default=True,
              help="Sample frames pictured in the report.")
@click.option("--report/--no-report", "make_report", default=True, show_default=True,
              help="Also write report.md and report.html.")
def verify(
    build_dir: Path, eval_spec: str, calib_spec: str | None, frames: int | None, int8_runner: str,
    compare_qdq: bool, allow_overlap: bool, max_drop: float | None, fallback: bool, rank: str,
    fallback_max_layers: int, samples: int, make_report: bool,
) -> None:
    """Measure float vs int8 mIoU of BUILD_DIR on held-out frames and write report.json."""
    from segcompile.data.spec import open_dataset
    from segcompile.report.stage import summary_text, write_report
    from segcompile.verify.stage import VerifyConfig, run_verify, run_verify_with_fallback

    config = VerifyConfig(
        int8_runner=int8_runner, compare_qdq=compare_qdq, max_frames=frames, allow_overlap=allow_overlap,
        max_drop=max_drop, num_samples=samples,
    )
    dataset = open_dataset(eval_spec, role="eval")
    calib_names = calibration_names(build_dir, calib_spec)
    if fallback:
        result, _ = run_verify_with_fallback(config, build_dir, dataset, calib_names, rank=rank,
                                             max_layers=fallback_max_layers)
    else:
        result = run_verify(config, build_dir, dataset, calib_names)
    if make_report:
        for path in write_report(build_dir):
            click.echo(f"wrote {path}", err=True)
    click.echo(summary_text(result.report))
    drop = result.miou_drop
    if result.report.get("fallback"):
        drop = result.report["fallback"]["final_drop"]
    check_gate(float("nan") if drop is None else drop, max_drop, str(build_dir))


def calibration_names(build_dir: Path, calib_spec: str | None) -> list[str] | None:
    """Names of the frames quantize calibrated on: the first N of ``calib_spec``, N from quant_params.json.

    None (no --calib) lets the verify stage use whatever quant_params.json records.
    """
    if calib_spec is None:
        return None
    from segcompile.data.spec import open_dataset

    names = list(open_dataset(calib_spec, role="calib").names)
    used = calibration_count(read_json(build_dir / "quant_params.json"))
    return names if used is None else names[:used]
