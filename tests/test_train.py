"""Training: loss goes down on real demo frames, checkpoints are plain data, augmentation keeps labels."""

from __future__ import annotations

import pytest
import torch

from segcompile.data.classes import IGNORE_LABEL
from segcompile.data.spec import open_dataset
from segcompile.export.source import load_checkpoint
from segcompile.train.augment import AugmentConfig, augment_batch
from segcompile.train.checkpoint import save_checkpoint
from segcompile.train.loop import TrainConfig, train_model
from segcompile.zoo.registry import build_model, bundled_weights, get_entry

DEMO = "demo_mobilenetv2s16_deeplabv3lite_160x128"


class _FirstFrames:
    """The first ``count`` frames of a dataset, to keep a training test short."""

    def __init__(self, dataset, count: int) -> None:
        self._dataset, self._count = dataset, count
        self.spec = f"{dataset.spec}[:{count}]"

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int):
        return self._dataset[index]


def test_a_few_epochs_reduce_the_loss_on_demo_frames():
    torch.set_num_threads(1)
    entry = get_entry(DEMO)
    model = build_model(entry)
    frames = _FirstFrames(open_dataset("demo:train"), 16)
    result = train_model(
        model, frames, entry.model_info(), TrainConfig(epochs=4, batch_size=8, warmup_epochs=1)
    )
    losses = [record["loss"] for record in result.history]
    assert losses[-1] < losses[0]


def test_checkpoint_round_trips_through_weights_only_loading(tmp_path):
    model = build_model(DEMO)
    path = save_checkpoint(tmp_path / "c.pt", model, DEMO, 8, {"note": "test"})
    loaded = load_checkpoint(path)
    assert loaded.model_name == DEMO and loaded.num_classes == 8
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict[key], value)


def test_augmentation_moves_labels_with_pixels():
    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(2, 3, 32, 32)
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    images[:, :, :, :16] = 255.0  # left half bright, labelled 1
    labels[:, :, :16] = 1
    config = AugmentConfig(brightness=0.0, contrast=0.0)
    out_images, out_labels = augment_batch(images, labels, config, generator)
    valid = out_labels != IGNORE_LABEL
    bright = out_images.mean(dim=1) > 127.5
    # Away from the blurred edge, label 1 is exactly where the bright pixels went.
    agreement = ((out_labels == 1) == bright)[valid].float().mean()
    assert agreement > 0.95


def test_the_demo_model_ships_trained_weights():
    path = bundled_weights(DEMO)
    assert path is not None and path.stat().st_size < 4_000_000
    checkpoint = load_checkpoint(path)
    assert checkpoint.model_name == DEMO
    assert checkpoint.num_classes == 8


def test_the_bundled_demo_model_is_meaningfully_accurate():
    from segcompile.train.loop import evaluate_miou

    torch.set_num_threads(1)
    entry = get_entry(DEMO)
    model = build_model(entry)
    model.load_state_dict(load_checkpoint(bundled_weights(DEMO)).state_dict)
    miou = evaluate_miou(model, open_dataset("demo:eval"), entry.model_info())
    assert miou >= 0.60


@pytest.mark.slow
def test_qat_fine_tuning_writes_qdq_onnx_whose_ranges_quantize_keeps(tmp_path):
    import onnx
    from click.testing import CliRunner

    from segcompile.cli import main
    from segcompile.quantize.scheme import PRESETS
    from segcompile.quantize.stage import QuantizeConfig, run_quantize

    out = tmp_path / "demo.qat.onnx"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--model",
            DEMO,
            "--data",
            "demo:calib",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--lr",
            "1e-4",
            "--augment",
            "none",
            "--qat",
            "tda4vm",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops

    quantized = run_quantize(QuantizeConfig(scheme=PRESETS["tda4vm"]), out, [], tmp_path / "build")
    assert quantized.imported and not quantized.calibrated


def test_qat_needs_an_onnx_output_name(tmp_path):
    from click.testing import CliRunner

    from segcompile.cli import main

    result = CliRunner().invoke(
        main,
        [
            "train",
            "--model",
            DEMO,
            "--data",
            "demo:calib",
            "--qat",
            "tda4vm",
            "--out",
            str(tmp_path / "x.pt"),
        ],
    )
    assert result.exit_code != 0
    assert "x.pt" in result.output and ".onnx" in result.output
