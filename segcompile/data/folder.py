"""A plain folder of images, optionally with a folder of masks matched by file stem."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from segcompile.data.frames import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    FileDataset,
    FileEntry,
    image_size,
    list_files,
)
from segcompile.errors import SegcompileError

# A folder (or its parent) may name its classes in a dataset.yaml with a `classes:` list.
CLASS_FILE = "dataset.yaml"


def open_folder(
    images: Path | str,
    masks: Path | str | None = None,
    class_names: Sequence[str] | None = None,
    spec: str | None = None,
) -> FileDataset:
    """Open ``images`` (files directly inside it) and, if given, ``masks`` matched to them by stem.

    Every image must have a mask of the same size when ``masks`` is given; a missing or mismatched mask,
    an unreadable image and an empty folder are :class:`SegcompileError` naming the file or folder.
    Image sizes are checked from file headers here, so a bad pair fails before any stage starts work.
    ``class_names`` defaults to the ``classes`` list of a ``dataset.yaml`` beside or above the images.
    """
    images = Path(images)
    image_files = list_files(images, IMAGE_SUFFIXES)
    if not image_files:
        raise SegcompileError(f"{images}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    _reject_duplicate_stems(image_files, "image")

    mask_by_stem: dict[str, Path] = {}
    if masks is not None:
        masks = Path(masks)
        mask_files = list_files(masks, MASK_SUFFIXES)
        if not mask_files:
            raise SegcompileError(f"{masks}: no masks found (looked for {', '.join(MASK_SUFFIXES)})")
        _reject_duplicate_stems(mask_files, "mask")
        mask_by_stem = {path.stem: path for path in mask_files}

    entries = []
    for image_path in image_files:
        mask_path = None
        if masks is not None:
            mask_path = mask_by_stem.get(image_path.stem)
            if mask_path is None:
                raise SegcompileError(
                    f"{image_path}: no mask named {image_path.stem}.png (or similar) in {masks}"
                )
            image_wh = image_size(image_path, "image")
            mask_wh = image_size(mask_path, "mask")
            if image_wh != mask_wh:
                raise SegcompileError(
                    f"{mask_path}: mask is {mask_wh[0]}x{mask_wh[1]} but its image {image_path} is "
                    f"{image_wh[0]}x{image_wh[1]}"
                )
        else:
            image_size(image_path, "image")
        entries.append(FileEntry(image_path.stem, image_path, mask_path))

    if class_names is None:
        class_names = read_class_names(images)
    if spec is None:
        spec = f"folder:{images}" + (f":{masks}" if masks is not None else "")
    return FileDataset(spec, entries, class_names)


def read_class_names(images: Path) -> tuple[str, ...]:
    """Class names from ``dataset.yaml`` in ``images`` or its parent; empty if neither has one."""
    for folder in (images, images.parent):
        path = folder / CLASS_FILE
        if not path.is_file():
            continue
        try:
            content = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise SegcompileError(f"{path}: unreadable ({exc})") from exc
        classes = content.get("classes") if isinstance(content, dict) else None
        if classes is None:
            continue
        if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
            raise SegcompileError(f"{path}: `classes` must be a list of names")
        return tuple(classes)
    return ()


def _reject_duplicate_stems(files: list[Path], what: str) -> None:
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise SegcompileError(
                f"{path}: two {what}s share the name {path.stem!r} (also {seen[path.stem].name})"
            )
        seen[path.stem] = path
