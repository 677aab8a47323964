"""PASCAL VOC 2012 segmentation: ``JPEGImages/*.jpg``, palette PNGs in ``SegmentationClass/`` and the
split lists ``ImageSets/Segmentation/{train,val,trainval}.txt``.

The PNGs store class ids as palette indices (0..20, 255 on object borders = ignore); the palette
colours are only for display, so the indices are read as they are.
"""

from __future__ import annotations

from pathlib import Path

from segcompile.data.classes import VOC_CLASSES
from segcompile.data.frames import FileDataset, FileEntry, SegmentationDataset, check_entries
from segcompile.data.subsets import for_role, parse_root_and_split, split_for_role
from segcompile.errors import SegcompileError

SPLITS: tuple[str, ...] = ("train", "val", "trainval")


def voc_root(root: Path) -> Path:
    """Accept ROOT as ``VOC2012`` itself, ``VOCdevkit`` or the folder holding ``VOCdevkit``."""
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise SegcompileError(f"{root}: no JPEGImages folder here or in VOC2012/ or VOCdevkit/VOC2012/")


def open_voc(root: Path | str, split: str, spec: str | None = None) -> FileDataset:
    """The frames listed in ``ImageSets/Segmentation/<split>.txt``; unusable ones are skipped and counted."""
    if split not in SPLITS:
        raise SegcompileError(f"voc2012: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    root = voc_root(Path(root))
    spec = spec or f"voc2012:{root}:{split}"
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    try:
        names = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    except FileNotFoundError as exc:
        raise SegcompileError(f"{list_file}: split list not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SegcompileError(f"{list_file}: unreadable split list ({exc})") from exc
    if not names:
        raise SegcompileError(f"{list_file}: the split list is empty")
    if len(set(names)) != len(names):
        raise SegcompileError(f"{list_file}: lists a frame twice")
    entries = [
        FileEntry(name, root / "JPEGImages" / f"{name}.jpg", root / "SegmentationClass" / f"{name}.png")
        for name in names
    ]
    kept, skipped = check_entries(spec, entries)
    return FileDataset(spec, kept, VOC_CLASSES, skipped=skipped)


def open_voc_spec(argument: str, role: str | None) -> SegmentationDataset:
    """``voc2012:ROOT[:train|val|trainval]``; without a split the role picks train or val."""
    root, split = parse_root_and_split("voc2012", argument, SPLITS)
    chosen, shuffle = split_for_role("voc2012", split, role, "train", "val")
    dataset = open_voc(root, chosen, spec=f"voc2012:{root}:{chosen}")
    return for_role(dataset, shuffle, f"voc2012:{argument}")
