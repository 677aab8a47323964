"""``segcompile report``: write one build's report.md/html, or compare several builds."""

from __future__ import annotations

from pathlib import Path

import click

from segcompile.artifacts import write_bytes_atomic


@click.command("report")
@click.argument("build_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With several builds: also write compare.md and compare.html into this folder.")
def report(build_dirs: tuple[Path, ...], out: Path | None) -> None:
    """Write report.md + report.html for BUILD_DIR, or compare BUILD_DIR A B ... side by side."""
    from segcompile.report.compare import compare_html, compare_markdown
    from segcompile.report.stage import load_report, summary_text, write_report

    if len(build_dirs) == 1:
        for path in write_report(build_dirs[0]):
            click.echo(f"wrote {path}", err=True)
        click.echo(summary_text(load_report(build_dirs[0])))
        return
    markdown = compare_markdown(build_dirs)
    click.echo(markdown)
    if out is not None:
        for name, text in (("compare.md", markdown), ("compare.html", compare_html(build_dirs))):
            click.echo(f"wrote {write_bytes_atomic(out / name, text.encode())}", err=True)
