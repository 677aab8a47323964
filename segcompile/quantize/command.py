"""``segcompile quantize``: parse options, call :func:`run_quantize`, say where each range came from."""

from __future__ import annotations

from pathlib import Path

import click

from segcompile.errors import SegcompileError

METHOD_CHOICES = ("minmax", "percentile", "entropy", "mse")


@click.command("quantize")
@click.argument("float_onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--calib",
    metavar="DATA",
    help="Calibration dataset spec (demo:calib, folder:IMAGES, a directory). Not needed when every "
    "range comes from a QAT model's QDQ nodes.",
)
@click.option(
    "--scheme",
    metavar="NAME",
    help="Scheme preset: tda4vm | per-channel | per-channel-asym (overrides --target's).",
)
@click.option("--target", metavar="NAME|FILE", help="Take the scheme from this target profile.")
@click.option(
    "--method",
    type=click.Choice(METHOD_CHOICES),
    default="minmax",
    show_default=True,
    help="How activation ranges are chosen from the calibration statistics.",
)
@click.option(
    "--frames",
    type=click.IntRange(min=0),
    default=64,
    show_default=True,
    help="Use at most this many calibration frames, in dataset order.",
)
@click.option(
    "--weight-search",
    type=click.Choice(("minmax", "mse")),
    default="mse",
    show_default=True,
    help="Weight scale choice: cover max |w|, or minimize the weights' squared error.",
)
@click.option(
    "--bias-correction/--no-bias-correction",
    default=True,
    show_default=True,
    help="Correct each conv's output mean shift caused by weight quantization.",
)
@click.option(
    "--equalize/--no-equalize",
    default=None,
    help="Cross-layer equalization of conv pairs (default: on for per-tensor schemes).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Recorded in quant_params.json.")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Build folder to write int8.qdq.onnx and quant_params.json into.",
)
def quantize(
    float_onnx: Path,
    calib: str | None,
    scheme: str | None,
    target: str | None,
    method: str,
    frames: int,
    weight_search: str,
    bias_correction: bool,
    equalize: bool | None,
    seed: int,
    out_dir: Path,
) -> None:
    """Calibrate FLOAT_ONNX to int8 and write a QDQ ONNX model plus quant_params.json."""
    from segcompile.modelinfo import read_model_info
    from segcompile.quantize.inputs import calibration_inputs
    from segcompile.quantize.qdq_import import has_qdq
    from segcompile.quantize.scheme import PRESETS, get_scheme
    from segcompile.quantize.stage import QuantizeConfig, load_onnx, run_quantize

    if scheme is not None:
        chosen = get_scheme(scheme)
    elif target is not None:
        from segcompile.compile.profiles import load_profile

        chosen = load_profile(target).quant_scheme()
    else:
        chosen = PRESETS["per-channel"]
    model = load_onnx(float_onnx)
    inputs: list = []
    if calib is not None:
        info = read_model_info(model, str(float_onnx))
        frames, inputs = calibration_inputs(calib, info, frames)
    elif not has_qdq(model):
        raise SegcompileError(f"--calib is required: {float_onnx} carries no quantization ranges")
    else:
        frames = 0
    del model
    config = QuantizeConfig(
        scheme=chosen,
        method=method,
        frames=frames,
        bias_correction=bias_correction,
        weight_search=weight_search,
        equalize=equalize,
        seed=seed,
    )
    result = run_quantize(config, float_onnx, inputs, out_dir)
    if result.imported:
        click.echo(
            f"kept {len(result.imported)} range(s) from the input's QDQ nodes"
            + (f" ({len(result.snapped)} adjusted to {chosen.name})" if result.snapped else "")
        )
    click.echo(
        f"calibrated {len(result.calibrated)} tensor(s) with {method} over {result.frames_used} frame(s)"
    )
    if result.equalized_pairs or result.bias_corrected:
        click.echo(
            f"equalized {result.equalized_pairs} conv pair(s), bias-corrected {result.bias_corrected} conv(s)"
        )
    for name, db in result.worst_layers[:3]:
        click.echo(f"  lowest SQNR: {name} {db:.1f} dB")
    click.echo(f"wrote {result.qdq_onnx} and {result.quant_params}")
