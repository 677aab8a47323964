"""``segcompile export``: parse options, call :func:`run_export`, print where things went."""

from __future__ import annotations

import re
from pathlib import Path

import click

from segcompile.errors import SegcompileError
from segcompile.export.contract_options import contract_from_options, input_contract_options

_SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_size(text: str, option: str = "--input-size") -> tuple[int, int]:
    """Parse ``WxH`` (e.g. ``96x64``) into ``(width, height)``."""
    match = _SIZE_PATTERN.match(text)
    if not match:
        raise SegcompileError(f"{option} {text}: expected WIDTHxHEIGHT, e.g. 512x256")
    width, height = int(match.group(1)), int(match.group(2))
    if width < 1 or height < 1:
        raise SegcompileError(f"{option} {text}: width and height must be positive")
    return width, height


@click.command("export")
@click.option("--model", "model", metavar="NAME|FILE",
              help="Zoo name, a .pt/.pth checkpoint that names its zoo entry, or an .onnx file.")
@click.option("--checkpoint", metavar="FILE", help="State dict for the zoo network (loaded weights-only).")
@click.option("--factory", metavar="PKG.MODULE:FUNCTION",
              help="Build the network by calling this function (then --model only names it).")
@click.option("--input-size", metavar="WxH", help="Export size, width x height (default: the zoo entry's).")
@click.option("--num-classes", type=int,
              help="Number of classes (default: the zoo entry's or the checkpoint's).")
@click.option("--opset", type=int, default=None, help="ONNX opset to export (default 18, at least 17).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for randomly initialised weights.")
@click.option("--calib", metavar="DATA",
              help="Dataset spec (e.g. demo:calib); its first frame is the torch-vs-onnxruntime check input.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Build folder to write float.onnx and export.json into.")
@input_contract_options
def export(
    model: str | None, checkpoint: str | None, factory: str | None, input_size: str | None,
    num_classes: int | None, opset: int | None, seed: int, calib: str | None, out_dir: Path,
    **contract_options,
) -> None:
    """Export a segmentation network to a checked, simplified float ONNX model."""
    contract, input_shape = contract_from_options(contract_options)
    # Heavy imports (torch, onnx) only when the command runs, so `segcompile --help` stays fast.
    from segcompile.export.config import DEFAULT_OPSET, ExportConfig
    from segcompile.export.stage import run_export

    sample_image = sample_name = None
    if calib:
        from segcompile.data.spec import open_dataset

        dataset = open_dataset(calib, role="calib")
        if len(dataset) == 0:
            raise SegcompileError(f"--calib {calib}: the dataset has no frames")
        frame = dataset[0]
        sample_image, sample_name = frame.image, f"{calib}:{frame.name}"
    config = ExportConfig(
        model=model, checkpoint=checkpoint, factory=factory,
        input_size=parse_size(input_size) if input_size else None, input_shape=input_shape,
        contract=contract, num_classes=num_classes,
        opset=DEFAULT_OPSET if opset is None else opset, seed=seed,
        sample_image=sample_image, sample_name=sample_name,
    )
    result = run_export(config, out_dir)
    parity = result.parity
    width, height = result.info.input_size
    click.echo(
        f"wrote {result.onnx_path} ({result.info.name}, {width}x{height}, {result.info.num_classes} classes, "
        f"opset {result.opset}, {result.nodes_after} nodes, {result.exporter})"
    )
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(
        f"parity {parity.reference} vs {parity.candidate} on {parity.input_source}: "
        f"max |diff| {parity.max_abs_diff:.3g}, mean |diff| {parity.mean_abs_diff:.3g}, "
        f"argmax agreement {parity.argmax_agreement:.2%}"
    )
    click.echo(f"details in {result.json_path}")
