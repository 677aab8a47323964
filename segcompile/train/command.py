"""`segcompile train`: train a zoo network on a dataset spec and save a checkpoint."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from segcompile.data.spec import open_dataset
from segcompile.errors import SegcompileError
from segcompile.export.source import load_checkpoint
from segcompile.quantize.scheme import PRESETS, QuantScheme
from segcompile.train.augment import AUGMENT_PRESETS
from segcompile.train.checkpoint import save_checkpoint
from segcompile.train.loop import TrainConfig, train_model
from segcompile.train.qat import finetune_qat
from segcompile.zoo.registry import build_model, bundled_weights, get_entry


@click.command("train")
@click.option("--model", "model_name", required=True, help="Zoo model name (see `segcompile models list`).")
@click.option(
    "--data", "data_spec", required=True, help="Training frames, e.g. demo:train or folder:IMG:MASKS."
)
@click.option("--eval", "eval_spec", default=None, help="Evaluation frames for mIoU during training.")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Checkpoint to write (.pt).",
)
@click.option("--epochs", default=TrainConfig.epochs, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=TrainConfig.batch_size, show_default=True, type=click.IntRange(1))
@click.option("--lr", "learning_rate", default=TrainConfig.learning_rate, show_default=True, type=float)
@click.option(
    "--augment",
    type=click.Choice(sorted(AUGMENT_PRESETS)),
    default="strong",
    show_default=True,
    help="Augmentation strength: strong (from scratch), light (fine-tuning), none.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--init",
    "init_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Start from this checkpoint's weights (fine-tuning).",
)
@click.option(
    "--qat",
    "qat_scheme",
    default=None,
    metavar="SCHEME|TARGET",
    help="Quantization-aware fine-tuning for this scheme (tda4vm, per-channel, ...) or target profile; "
    "--out is then a QDQ .onnx file that `segcompile build --model` takes with its learned ranges.",
)
@click.option("--threads", default=None, type=click.IntRange(1), help="torch threads (default: all cores).")
def train(
    model_name,
    data_spec,
    eval_spec,
    out_path,
    epochs,
    batch_size,
    learning_rate,
    augment,
    seed,
    init_path,
    qat_scheme,
    threads,
):
    """Train a zoo network from scratch (or fine-tune it) on the CPU."""
    if threads:
        torch.set_num_threads(threads)
    entry = get_entry(model_name)
    train_set = open_dataset(data_spec, role="train")
    eval_set = open_dataset(eval_spec, role="eval") if eval_spec else None
    model = build_model(entry, seed=seed)
    if qat_scheme is not None:
        scheme = _resolve_scheme(qat_scheme)
        if out_path.suffix.lower() != ".onnx":
            raise SegcompileError(
                f"--out {out_path}: with --qat the result is a QDQ ONNX file; name it *.onnx"
            )
        # Fake quantization is fine-tuning: it starts from trained weights, the shipped ones by default.
        init_path = init_path or bundled_weights(entry)
        if init_path is None:
            raise SegcompileError(f"--qat: {entry.name} has no bundled weights; give --init CHECKPOINT")
    if init_path is not None:
        model.load_state_dict(load_checkpoint(init_path).state_dict)
    info = entry.model_info()
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        augment=AUGMENT_PRESETS[augment],
    )
    if qat_scheme is not None:
        result = finetune_qat(model, scheme, train_set, info, config, out_path, eval_set)
        summary = f"wrote QAT model {out_path} ({scheme.name}) after {epochs} epochs in {result.seconds:.0f}s"
        if result.final_miou is not None:
            summary += f"; fake-quant eval mIoU {100 * result.final_miou:.2f}%"
        click.echo(summary)
        return
    result = train_model(model, train_set, info, config, eval_set)
    metadata = {
        "data": data_spec,
        "eval": eval_spec,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "augment": augment,
        "init": str(init_path) if init_path else None,
        "seed": seed,
        "eval_miou": result.final_miou,
        "seconds": round(result.seconds, 1),
        "history": result.history,
    }
    save_checkpoint(out_path, model, entry.name, entry.num_classes, metadata)
    summary = f"wrote {out_path} after {epochs} epochs in {result.seconds:.0f}s"
    if result.final_miou is not None:
        summary += f"; eval mIoU {100 * result.final_miou:.2f}%"
    click.echo(summary)


def _resolve_scheme(name: str) -> QuantScheme:
    """A scheme preset by name, or the scheme of a target profile (name or YAML path)."""
    if name in PRESETS:
        return PRESETS[name]
    from segcompile.compile.profiles import load_profile

    return load_profile(name).quant_scheme()
