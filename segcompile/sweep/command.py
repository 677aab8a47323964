"""``segcompile sweep sweep.yaml``: option parsing only (the work is segcompile.sweep.engine)."""

from __future__ import annotations

from pathlib import Path

import click

from segcompile.errors import SegcompileError


@click.command("sweep")
@click.argument("sweep_file", metavar="SWEEP.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--address",
    default=None,
    metavar="auto|ray://HOST:PORT",
    help="A running Ray cluster to use (default: start a local Ray for this sweep).",
)
@click.option(
    "--out",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (overrides out: in the file): builds/, logs/ and sweep.md|csv|html.",
)
@click.option("--workers", type=click.IntRange(1), default=None, help="CPUs of the local Ray (default: all).")
def sweep(sweep_file: Path, address: str | None, out: Path | None, workers: int | None) -> None:
    """Build every model x target x method of SWEEP.yaml on Ray and write one comparison table.

    Finished build folders with the same inputs are reused, so an interrupted sweep resumes.
    """
    from segcompile.sweep.config import load_sweep
    from segcompile.sweep.engine import run_sweep

    config = load_sweep(sweep_file)
    result = run_sweep(
        config, out=out, address=address, workers=workers, echo=lambda line: click.echo(line, err=True)
    )
    click.echo(f"table: {result.tables['md']} (also {TABLE_NAMES})")
    if result.failures:
        raise SegcompileError(
            f"{len(result.failures)} of {len(result.rows)} builds failed (see the table and "
            f"{result.out / 'logs'}); run the sweep again to retry them"
        )


TABLE_NAMES = "sweep.csv, sweep.html"
