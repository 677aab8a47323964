"""``segcompile subset``: pick a seeded selection of frames and pin it in a reusable list file."""

from __future__ import annotations

from pathlib import Path

import click

from segcompile.data.spec import ROLES


@click.command("subset")
@click.argument("spec")
@click.option("--frames", "count", type=click.IntRange(min=1), required=True, help="How many frames to pick.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random selection.")
@click.option("--role", type=click.Choice(ROLES), default="calib", show_default=True,
              help="Which split a SPEC without one means (calib: training split, eval: validation split).")
@click.option("--exclude", "excludes", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A list file whose frames must not be picked (repeatable), e.g. an evaluation subset.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="List file to write [default: calibration/<dataset>-<role>-<N>-seed<S>.txt].")
def subset(spec: str, count: int, seed: int, role: str, excludes: tuple[Path, ...], out: Path | None) -> None:
    """Pick COUNT frames of SPEC at random (seeded) and write them as a list file; reuse it as subset:FILE."""
    from segcompile.data.spec import open_dataset
    from segcompile.data.subsets import pinned_spec, read_subset_list, select_subset, write_subset_list

    dataset = open_dataset(spec, role=role)
    excluded: set[str] = set()
    for path in excludes:
        excluded.update(read_subset_list(path)[1])
    chosen = select_subset(dataset, count, seed, exclude=excluded)
    if out is None:
        scheme = spec.partition(":")[0] if ":" in spec else "folder"
        out = Path("calibration") / f"{scheme}-{role}-{count}-seed{seed}.txt"
    path = write_subset_list(out, chosen.names, pinned_spec(dataset), seed=seed)
    skipped = len(getattr(dataset, "skipped", ()))
    note = f" ({skipped} unusable frames skipped)" if skipped else ""
    click.echo(f"wrote {path}: {len(chosen)} of {len(dataset)} frames{note}; use it as subset:{path}")
