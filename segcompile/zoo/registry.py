"""The model zoo: every EdgeAI-Torchvision segmentation model of the seed table, plus the demo model.

Names are ``<dataset>_<backbone>_<head>[_qat]_<W>x<H>``. Entries carry the seed table's GigaMACs and
mIoU for reference; ``entry_macs`` counts our own networks (tests hold the two together).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from segcompile.data.classes import DATASET_CLASSES
from segcompile.errors import SegcompileError
from segcompile.modelinfo import ModelInfo
from segcompile.zoo.macs import count_macs
from segcompile.zoo.network import BACKBONES, SegmentationNet, build_network


@dataclass(frozen=True)
class ZooEntry:
    """One named model: architecture, input size, classes and the seed table's reference numbers."""

    name: str
    dataset: str
    backbone: str
    head: str
    input_size: tuple[int, int]  # (width, height)
    seed_gmacs: float | None
    seed_miou: float | None
    qat: bool
    num_classes: int
    class_names: tuple[str, ...]
    width_mult: float = 1.0
    seed_model: str = ""  # the model's name in the seed table, e.g. "MobileNetV2S16+DeepLabV3Lite"
    notes: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """NCHW shape of one input image."""
        width, height = self.input_size
        return (1, 3, height, width)

    def model_info(self) -> ModelInfo:
        """The :class:`ModelInfo` the export stage stores for this entry (ImageNet mean/std, RGB)."""
        return ModelInfo(
            name=self.name,
            num_classes=self.num_classes,
            input_size=self.input_size,
            class_names=self.class_names,
        )


_QAT_NOTE = "8-bit quantization-aware-trained variant (the seed's '-QAT' row); same float architecture"
_ADE_NOTE = (
    "seed model from TI's older jacinto-ai-pytorch (2021); its GMACs run ~2-3% above this architecture"
)
_FPN_768_NOTE = "seed GMACs (3.84) disagree with its own 1536x768 row (15.07 / 4 = 3.77); ours is 3.77"
_NOTES: dict[str, str] = {
    "cityscapes_mobilenetv2_fpnlite_768x384": _FPN_768_NOTE,
    "cityscapes_mobilenetv2_fpnlite_qat_768x384": f"{_FPN_768_NOTE}. {_QAT_NOTE}",
    "cityscapes_regnetx1.6gf_fpnlite_1024x512": (
        "TI's published config (decoder 264 ch, group 24) counts 26.37 GMACs, 8.5% above the seed's 24.29"
    ),
    "cityscapes_regnetx3.2gf_fpnlite_1536x768": "the seed spells it 'RegNetX3.2FF'; it is RegNetX-3.2GF",
    "demo_mobilenetv2s16_deeplabv3lite_160x128": (
        "demo model: width 0.5 (backbone, ASPP/decoder 128 ch, shortcut 24 ch) to keep the checkpoint "
        "small; architecture otherwise as cityscapes_mobilenetv2s16_deeplabv3lite"
    ),
}

# The seed's EdgeAI-Torchvision table in its order ("-" = not given), then the demo model.
_TABLE = """
dataset     backbone         head           qat  WxH        GMACs   mIoU%  seed_model
ade20k32    mobilenetv2s16   deeplabv3lite  -    512x512    3.28    51.01  MobileNetV2S16+DeepLabV3Lite
ade20k32    mobilenetv2      unetlite       -    512x512    2.427   49.95  MobileNetV2+UNetLite
ade20k32    mobilenetv2      fpnlite        -    512x512    3.481   50.72  MobileNetV2+FPNLite
ade20k32    mobilenetv2w1.4  fpnlite        -    512x512    6.646   52.93  MobileNetV2-1.4+FPNLite
ade20k32    regnetx400mf     fpnlite        -    384x384    3.1526  51.03  RegNetX400MF+FPNLite
ade20k32    regnetx800mf     fpnlite        -    512x512    8.0683  53.29  RegNetX800MF+FPNLite
cocoseg21   mobilenetv2s16   deeplabv3lite  -    512x512    3.161   57.77  MobileNetV2S16+DeepLabV3Lite
cocoseg21   mobilenetv2      unetlite       -    512x512    2.009   57.01  MobileNetV2+UNetLite
cocoseg21   mobilenetv2      fpnlite        -    512x512    3.357   -      MobileNetV2+FPNLite
cocoseg21   regnetx800mf     fpnlite        -    512x512    7.864   61.15  RegNetX800MF+FPNLite
cityscapes  mobilenetv2s16   deeplabv3lite  -    768x384    3.54    69.13  MobileNetV2S16+DeepLabV3Lite
cityscapes  mobilenetv2      unetlite       -    768x384    2.20    68.94  MobileNetV2+UNetLite
cityscapes  mobilenetv2      fpnlite        -    768x384    3.84    70.39  MobileNetV2+FPNLite
cityscapes  mobilenetv2      fpnlite        -    1536x768   15.07   74.61  MobileNetV2+FPNLite
cityscapes  mobilenetv2s16   deeplabv3lite  qat  768x384    3.54    68.77  MobileNetV2S16+DeepLabV3Lite-QAT
cityscapes  mobilenetv2      unetlite       qat  768x384    2.20    68.18  MobileNetV2+UNetLite-QAT
cityscapes  mobilenetv2      fpnlite        qat  768x384    3.84    69.88  MobileNetV2+FPNLite-QAT
cityscapes  regnetx800mf     fpnlite        -    768x384    8.84    72.01  RegNetX800MF+FPNLite
cityscapes  regnetx1.6gf     fpnlite        -    1024x512   24.29   75.84  RegNetX1.6GF+FPNLite
cityscapes  regnetx3.2gf     fpnlite        -    1536x768   111.16  78.90  RegNetX3.2FF+FPNLite
cityscapes  regnetx400mf     fpnlite        -    768x384    6.09    68.03  RegNetX400MF+FPNLite
cityscapes  regnetx400mf     fpnlite        -    1536x768   24.37   73.96  RegNetX400MF+FPNLite
demo        mobilenetv2s16   deeplabv3lite  -    160x128    -       -      -
"""
# Width multipliers that differ from the backbone's default (the demo model is half width).
_WIDTH_MULT: dict[str, float] = {"demo_mobilenetv2s16_deeplabv3lite_160x128": 0.5}


def _optional_float(cell: str) -> float | None:
    return None if cell == "-" else float(cell)


def _entry(line: str) -> ZooEntry:
    dataset, backbone, head, qat_cell, size_cell, gmacs, miou, seed_model = line.split()
    width, height = (int(v) for v in size_cell.split("x"))
    qat = qat_cell == "qat"
    name = f"{dataset}_{backbone}_{head}{'_qat' if qat else ''}_{width}x{height}"
    classes = DATASET_CLASSES[dataset]
    notes = _NOTES.get(name) or (_ADE_NOTE if dataset == "ade20k32" else _QAT_NOTE if qat else "")
    return ZooEntry(
        name=name,
        dataset=dataset,
        backbone=backbone,
        head=head,
        input_size=(width, height),
        seed_gmacs=_optional_float(gmacs),
        seed_miou=_optional_float(miou),
        qat=qat,
        num_classes=len(classes),
        class_names=classes,
        width_mult=_WIDTH_MULT.get(name, BACKBONES[backbone].default_width),
        seed_model="" if seed_model == "-" else seed_model,
        notes=notes,
    )


_ENTRIES: tuple[ZooEntry, ...] = tuple(_entry(line) for line in _TABLE.strip().splitlines()[1:])
_BY_NAME: dict[str, ZooEntry] = {entry.name: entry for entry in _ENTRIES}
assert len(_BY_NAME) == len(_ENTRIES), "zoo entry names must be unique"


def list_entries() -> list[ZooEntry]:
    """All zoo entries in table order (ADE20K32, COCOSeg21, Cityscapes, demo)."""
    return list(_ENTRIES)


def get_entry(name: str) -> ZooEntry:
    """The entry called ``name`` (case-insensitive); unknown names raise with the closest matches."""
    entry = _BY_NAME.get(name.strip().lower())
    if entry is not None:
        return entry
    close = difflib.get_close_matches(name.strip().lower(), list(_BY_NAME), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `segcompile models list` shows them all"
    raise SegcompileError(f"unknown zoo model {name!r}{hint}")


def _resolve(entry_or_name: ZooEntry | str) -> ZooEntry:
    return entry_or_name if isinstance(entry_or_name, ZooEntry) else get_entry(entry_or_name)


def build_model(
    entry_or_name: ZooEntry | str, num_classes: int | None = None, seed: int = 0
) -> SegmentationNet:
    """Build the entry's network (eval mode), initialised deterministically from ``seed``.

    ``num_classes`` overrides the entry's class count (e.g. to fine-tune on another label set).
    No weights are loaded: checkpoints are the training/export stages' business.
    """
    entry = _resolve(entry_or_name)
    return build_network(
        entry.backbone,
        entry.head,
        entry.num_classes if num_classes is None else num_classes,
        width_mult=entry.width_mult,
        seed=seed,
    )


@cache
def entry_macs(entry_or_name: ZooEntry | str) -> int:
    """Multiply-accumulates of the entry's network at its input size (built on the meta device: fast)."""
    entry = _resolve(entry_or_name)
    with torch.device("meta"):
        model = build_model(entry)
    return count_macs(model, entry.input_shape)


WEIGHTS_DIR = Path(__file__).parent / "weights"


def bundled_weights(entry_or_name: ZooEntry | str) -> Path | None:
    """The checkpoint segcompile ships for this entry (``zoo/weights/<name>.pt``), if any.

    Only the demo model ships weights: the seed's networks are defined here but their trained
    weights are not redistributable and nothing may be downloaded at run time.
    """
    path = WEIGHTS_DIR / f"{_resolve(entry_or_name).name}.pt"
    return path if path.is_file() else None
