"""The ``segcompile`` command line.

Each pipeline stage owns its click command in ``segcompile/<stage>/command.py``;
this module only assembles them and turns :class:`SegcompileError` into one clean line.
"""

from __future__ import annotations

import sys
import warnings

import click

from segcompile import __version__
from segcompile.errors import SegcompileError


class SegcompileGroup(click.Group):
    """A click group that prints user errors as one line unless ``--debug`` is given."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SegcompileError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=SegcompileGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="segcompile")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Compile and quantize semantic segmentation networks for embedded boards.

    \b
    segcompile build --model NAME|ckpt.pt|model.onnx --target tda4vm --calib DATA
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if not debug:
        # Warnings meant for users (e.g. skipped frames) read as one line, not as Python source locations.
        warnings.formatwarning = _one_line_warning
        warnings.simplefilter("once")


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def _register_commands() -> None:
    # Stage commands live with their stage; importing them here keeps this module the one place
    # that shows the whole command surface.
    from segcompile.compile.command import compile_command, targets
    from segcompile.export.command import export
    from segcompile.perf.command import bench, tune
    from segcompile.pipeline_command import build
    from segcompile.quantize.command import quantize
    from segcompile.report.command import report
    from segcompile.train.command import train
    from segcompile.verify.command import verify
    from segcompile.zoo.command import models

    commands = (models, build, export, train, quantize, compile_command, targets, verify, report)
    for command in (*commands, bench, tune):
        main.add_command(command)
    from segcompile.data.command import subset

    main.add_command(subset)
    from segcompile.sweep.command import sweep

    main.add_command(sweep)


_register_commands()

if __name__ == "__main__":
    main()
