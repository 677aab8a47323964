"""`segcompile models list|show`: browse the model zoo."""

from __future__ import annotations

import json

import click
import torch

from segcompile.zoo.registry import ZooEntry, build_model, entry_macs, get_entry, list_entries


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(entry: ZooEntry) -> dict[str, object]:
    width, height = entry.input_size
    return {
        "name": entry.name,
        "dataset": entry.dataset,
        "backbone": entry.backbone,
        "head": entry.head,
        "num_classes": entry.num_classes,
        "input_size": [width, height],
        "width_mult": entry.width_mult,
        "qat": entry.qat,
        "macs": entry_macs(entry),
        "gmacs": round(entry_macs(entry) / 1e9, 4),
        "seed_gmacs": entry.seed_gmacs,
        "seed_miou": entry.seed_miou,
        "seed_model": entry.seed_model,
        "notes": entry.notes,
    }


@click.group("models")
def models() -> None:
    """Browse the model zoo (networks defined in plain torch; no weights are downloaded)."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def list_command(as_json: bool) -> None:
    """List every zoo model with our GigaMACs next to the seed table's."""
    rows = [_row(entry) for entry in list_entries()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("name", "dataset", "classes", "input WxH", "GMACs", "seed GMACs", "seed mIoU%")
    table = [
        (
            str(r["name"]),
            str(r["dataset"]),
            str(r["num_classes"]),
            "{}x{}".format(*r["input_size"]),
            _fmt(r["gmacs"], 3),
            _fmt(r["seed_gmacs"], 3),
            _fmt(r["seed_miou"], 2),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *table)) for i in range(len(header))]
    for line in (header, *table):
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        click.echo("  ".join(cells).rstrip())


@models.command("show")
@click.argument("name")
def show_command(name: str) -> None:
    """Show the architecture summary of the zoo model NAME."""
    entry = get_entry(name)
    with torch.device("meta"):
        model = build_model(entry)
    params = sum(p.numel() for p in model.parameters())
    backbone = model.backbone
    width, height = entry.input_size
    lines = [
        ("name", entry.name),
        ("dataset", entry.dataset),
        (
            "backbone",
            f"{entry.backbone} (width {entry.width_mult:g}, output stride {max(backbone.out_strides)})",
        ),
        (
            "encoder features",
            ", ".join(f"s{s}:{c}" for s, c in zip(backbone.out_strides, backbone.out_channels, strict=True)),
        ),
        ("head", f"{entry.head} (decoder {backbone.decoder_channels} ch, group size {backbone.group_size})"),
        ("input", f"{width}x{height} (WxH), NCHW {entry.input_shape}"),
        ("classes", f"{entry.num_classes}: {', '.join(entry.class_names)}"),
        ("params", f"{params:,} ({params / 1e6:.2f} M)"),
        ("GMACs", f"{entry_macs(entry) / 1e9:.4f}"),
        ("seed GMACs", _fmt(entry.seed_gmacs, 4)),
        ("seed mIoU%", _fmt(entry.seed_miou, 2)),
        ("QAT", "yes" if entry.qat else "no"),
    ]
    if entry.notes:
        lines.append(("notes", entry.notes))
    key_width = max(len(key) for key, _ in lines)
    for key, value in lines:
        click.echo(f"{key.ljust(key_width)}  {value}")
