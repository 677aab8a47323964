"""`segcompile build`: every stage from a model to a verified, compiled int8 build folder."""

from __future__ import annotations

from pathlib import Path

import click

from segcompile.export.command import parse_size
from segcompile.export.contract_options import contract_from_options, input_contract_options
from segcompile.pipeline import BuildConfig, run_build


def _parse_size(_ctx, _param, value: str | None) -> tuple[int, int] | None:
    return None if value is None else parse_size(value)


@click.command("build")
@click.option(
    "--model",
    required=True,
    metavar="NAME|CKPT|ONNX",
    help="Zoo name (segcompile models list), a checkpoint (.pt) or an ONNX file.",
)
@click.option(
    "--checkpoint",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="State dict for a zoo name (default: the bundled weights when the zoo ships them).",
)
@click.option(
    "--target",
    required=True,
    metavar="BOARD|PROFILE.yaml",
    help="Target profile (segcompile targets list) or a path to your own.",
)
@click.option("--calib", required=True, metavar="DATA", help="Calibration frames, e.g. demo:calib.")
@click.option(
    "--eval",
    "eval_spec",
    default=None,
    metavar="DATA",
    help="Held-out evaluation frames with masks, e.g. demo:eval (omit to skip verify).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Build folder.")
@click.option(
    "--input-size", callback=_parse_size, default=None, metavar="WxH", help="Override the model's input size."
)
@click.option(
    "--scheme",
    default=None,
    help="Override the profile's quantization scheme (tda4vm | per-channel | per-channel-asym).",
)
@click.option(
    "--method",
    type=click.Choice(("minmax", "percentile", "entropy", "mse")),
    default="minmax",
    show_default=True,
    help="Activation range method.",
)
@click.option(
    "--frames",
    "calib_frames",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="Calibration frames to use.",
)
@click.option("--eval-frames", type=click.IntRange(1), default=None, help="Evaluate on at most N frames.")
@click.option("--bias-correction/--no-bias-correction", default=True, show_default=True)
@click.option(
    "--max-drop",
    type=float,
    default=None,
    metavar="POINTS",
    help="Exit non-zero (3) when int8 mIoU is more than POINTS below float.",
)
@click.option(
    "--fallback", is_flag=True, help="With --max-drop: move the worst layers out of int8 until it fits."
)
@click.option(
    "--int8-runner",
    default="auto",
    show_default=True,
    type=click.Choice(("auto", "tvm-host", "tvm-aarch64-qemu", "onnxruntime-qdq")),
    help="What runs the int8 model during verify.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Re-run every stage even if its inputs are unchanged.")
@input_contract_options
def build(
    model,
    checkpoint,
    target,
    calib,
    eval_spec,
    out,
    input_size,
    scheme,
    method,
    calib_frames,
    eval_frames,
    bias_correction,
    max_drop,
    fallback,
    int8_runner,
    seed,
    force,
    **contract_options,
) -> None:
    """Export, quantize, compile and verify MODEL for TARGET into one build folder."""
    contract, input_shape = contract_from_options(contract_options)
    config = BuildConfig(
        model=model,
        checkpoint=checkpoint,
        target=target,
        calib=calib,
        eval=eval_spec,
        out=out,
        input_size=input_size,
        input_shape=input_shape,
        contract=contract,
        scheme=scheme,
        method=method,
        calib_frames=calib_frames,
        eval_frames=eval_frames,
        bias_correction=bias_correction,
        max_drop=max_drop,
        fallback=fallback,
        int8_runner=int8_runner,
        seed=seed,
        force=force,
    )
    run_build(config, echo=lambda line: click.echo(line, err=True))
