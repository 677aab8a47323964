"""Cityscapes as it ships: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
``gtFine/<split>/<city>/*_gtFine_labelIds.png``, label ids mapped to the 19 evaluation trainIds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segcompile.data.classes import CITYSCAPES_CLASSES, IGNORE_LABEL
from segcompile.data.frames import FileDataset, FileEntry, SegmentationDataset, check_entries, find_files
from segcompile.data.subsets import for_role, parse_root_and_split, split_for_role
from segcompile.errors import SegcompileError

SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"

# labelId -> trainId from cityscapesScripts' labels.py (the official table); every id not listed
# (unlabeled, ego vehicle, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer,
# license plate and any value above 33) is ignored.
LABEL_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}


def cityscapes_lut() -> np.ndarray:
    """The 256-entry uint8 table from stored labelIds to trainIds (255 = ignore)."""
    lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for label_id, train_id in LABEL_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


def open_cityscapes(root: Path | str, split: str, spec: str | None = None) -> FileDataset:
    """One split of a Cityscapes tree; frames whose mask is missing or unreadable are skipped and counted."""
    root = Path(root)
    if split not in SPLITS:
        raise SegcompileError(f"cityscapes: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    spec = spec or f"cityscapes:{root}:{split}"
    images_dir = root / "leftImg8bit" / split
    masks_dir = root / "gtFine" / split
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise SegcompileError(f"{folder}: folder not found (expected the Cityscapes layout under {root})")
    images = find_files(images_dir, IMAGE_SUFFIX)
    if not images:
        raise SegcompileError(f"{images_dir}: no *{IMAGE_SUFFIX} images found")
    entries = []
    seen: dict[str, Path] = {}
    for image in images:
        name = image.name[: -len(IMAGE_SUFFIX)]
        if name in seen:
            raise SegcompileError(f"{image}: two images share the name {name!r} (also {seen[name]})")
        seen[name] = image
        mask = masks_dir / image.parent.relative_to(images_dir) / f"{name}{MASK_SUFFIX}"
        entries.append(FileEntry(name, image, mask))
    kept, skipped = check_entries(spec, entries)
    return FileDataset(spec, kept, CITYSCAPES_CLASSES, label_lut=cityscapes_lut(), skipped=skipped)


def open_cityscapes_spec(argument: str, role: str | None) -> SegmentationDataset:
    """``cityscapes:ROOT[:split]``; without a split the role picks it (see :func:`split_for_role`)."""
    root, split = parse_root_and_split("cityscapes", argument, SPLITS)
    chosen, shuffle = split_for_role("cityscapes", split, role, "train", "val")
    dataset = open_cityscapes(root, chosen, spec=f"cityscapes:{root}:{chosen}")
    return for_role(dataset, shuffle, f"cityscapes:{argument}")
