"""ADE20K SceneParsing (``ADEChallengeData2016``) with all 150 classes, and MLPerf's 32-class ADE20K32.

Layout: ``ADEChallengeData2016/images/{training,validation}/*.jpg`` and
``ADEChallengeData2016/annotations/{training,validation}/*.png`` (0 = unlabelled, 1..150 = classes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segcompile.data.classes import ADE20K32_CLASSES, ADE20K_CLASSES, IGNORE_LABEL
from segcompile.data.frames import FileDataset, FileEntry, SegmentationDataset, check_entries, list_files
from segcompile.data.subsets import for_role, parse_root_and_split, split_for_role
from segcompile.errors import SegcompileError

SPLITS: tuple[str, ...] = ("train", "val")
_FOLDERS = {"train": "training", "val": "validation"}
ADE_LABELS = 150  # stored values 1..150; anything above belongs to some other dataset


def ade20k_lut() -> np.ndarray:
    """Full ADE20K: 0 (unlabelled) -> 255 ignore, label k -> class k-1; values above 150 stay out of range."""
    lut = np.arange(256, dtype=np.uint8)
    lut[0] = IGNORE_LABEL
    lut[1 : ADE_LABELS + 1] = np.arange(ADE_LABELS, dtype=np.uint8)
    return lut


def ade20k32_lut() -> np.ndarray:
    """ADE20K32 as MLPerf defines it: labels 1..31 kept, 0 and 32..150 -> class 0 ("other").

    Values above 150 are left as they are so that the class check rejects masks from another dataset.
    """
    lut = np.arange(256, dtype=np.uint8)
    lut[0] = 0
    lut[32 : ADE_LABELS + 1] = 0
    return lut


def ade_root(root: Path) -> Path:
    """Accept ROOT as ``ADEChallengeData2016`` itself or the folder that holds it."""
    nested = root / "ADEChallengeData2016"
    return nested if nested.is_dir() else root


def open_ade20k(root: Path | str, split: str, classes: int = 150, spec: str | None = None) -> FileDataset:
    """One split of ADE20K with ``classes`` = 150 (full) or 32 (ADE20K32)."""
    if classes not in (150, 32):
        raise ValueError("classes must be 150 or 32")
    if split not in SPLITS:
        raise SegcompileError(f"ade20k: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    root = ade_root(Path(root))
    scheme = "ade20k" if classes == 150 else "ade20k32"
    spec = spec or f"{scheme}:{root}:{split}"
    images_dir = root / "images" / _FOLDERS[split]
    masks_dir = root / "annotations" / _FOLDERS[split]
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise SegcompileError(f"{folder}: folder not found (expected ADEChallengeData2016 under {root})")
    images = list_files(images_dir, (".jpg", ".jpeg", ".png"))
    if not images:
        raise SegcompileError(f"{images_dir}: no images found")
    entries = [FileEntry(image.stem, image, masks_dir / f"{image.stem}.png") for image in images]
    kept, skipped = check_entries(spec, entries)
    if classes == 150:
        return FileDataset(spec, kept, ADE20K_CLASSES, label_lut=ade20k_lut(), skipped=skipped)
    return FileDataset(spec, kept, ADE20K32_CLASSES, label_lut=ade20k32_lut(), skipped=skipped)


def _opener(classes: int):
    scheme = "ade20k" if classes == 150 else "ade20k32"

    def open_spec(argument: str, role: str | None) -> SegmentationDataset:
        root, split = parse_root_and_split(scheme, argument, SPLITS)
        chosen, shuffle = split_for_role(scheme, split, role, "train", "val")
        dataset = open_ade20k(root, chosen, classes, spec=f"{scheme}:{root}:{chosen}")
        return for_role(dataset, shuffle, f"{scheme}:{argument}")

    open_spec.__doc__ = f"``{scheme}:ROOT[:train|val]``; without a split the role picks it."
    return open_spec


open_ade20k_spec = _opener(150)
open_ade20k32_spec = _opener(32)
