"""What a frame is, the dataset protocol every reader implements, and reading images and masks from files.

Readers for new layouts (Cityscapes, ADE20K, ...) subclass :class:`SegmentationDataset`; when their
frames are plain image and mask files they only need to build a list of :class:`FileEntry` and hand it
to :class:`FileDataset`, optionally with a lookup table that maps stored label values to class ids.
"""

from __future__ import annotations

import abc
import errno
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from segcompile.errors import SegcompileError

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
MASK_SUFFIXES: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff", ".pgm")

# Refuse pictures above this many pixels (64 Mpx, e.g. 8192x8192) before decoding them, instead
# of relying on Pillow's global decompression-bomb limit, which other code may change.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024


class SkippedFramesWarning(UserWarning):
    """Some frames of a dataset were left out; ``dataset.skipped`` says which and why."""


@dataclass(frozen=True)
class SkippedFrame:
    """A frame a reader left out instead of failing: its name, the file at fault and why."""

    name: str
    path: Path
    reason: str


@dataclass(frozen=True, eq=False)
class Frame:
    """One picture and, when known, its per-pixel class ids.

    ``image`` is uint8 HxWx3 RGB; ``mask`` is uint8 HxW (255 = ignore) of the same height and width.
    """

    name: str
    image: np.ndarray
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        image, mask = self.image, self.mask
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise SegcompileError(f"{self.name}: image must be uint8 HxWx3, got {image.dtype} {image.shape}")
        if mask is not None:
            if mask.dtype != np.uint8 or mask.ndim != 2:
                raise SegcompileError(f"{self.name}: mask must be uint8 HxW, got {mask.dtype} {mask.shape}")
            if mask.shape != image.shape[:2]:
                raise SegcompileError(
                    f"{self.name}: mask is {_size_text(mask.shape)} "
                    f"but the image is {_size_text(image.shape)}"
                )


class SegmentationDataset(abc.ABC):
    """An indexable, sized collection of :class:`Frame` with its class names.

    Subclasses set ``spec`` (the string it was opened from), ``class_names`` (may be empty when the
    folder does not say; the model's metadata then names the classes) and ``names`` (one per frame, in
    order), and implement :meth:`load`.
    """

    spec: str
    class_names: tuple[str, ...]
    names: list[str]
    # Frames the reader left out (missing or mismatched mask, unreadable file, ...), for the report.
    skipped: Sequence[SkippedFrame] = ()

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Frame:
        if not isinstance(index, int | np.integer):
            raise TypeError(f"dataset indices are integers, not {type(index).__name__}")
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"{self.spec}: frame {index} out of range (0..{size - 1})")
        return self.load(int(index) % size)

    def __iter__(self) -> Iterator[Frame]:
        for index in range(len(self)):
            yield self.load(index)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec!r}: {len(self)} frames, {len(self.class_names)} classes>"

    @abc.abstractmethod
    def load(self, index: int) -> Frame:
        """Read frame ``index`` (0 <= index < len)."""


@dataclass(frozen=True)
class FileEntry:
    """Where one frame's image and (optional) mask live on disk."""

    name: str
    image: Path
    mask: Path | None = None


class FileDataset(SegmentationDataset):
    """Frames stored as one image file and one single-channel mask file each."""

    def __init__(
        self,
        spec: str,
        entries: Sequence[FileEntry],
        class_names: Sequence[str] = (),
        label_lut: np.ndarray | None = None,
        skipped: Sequence[SkippedFrame] = (),
    ) -> None:
        """``label_lut``: optional uint8 array of 256 entries mapping stored mask values to class ids.

        When ``class_names`` is given, a mask value that maps to neither a class nor ``255`` (ignore) is a
        :class:`SegcompileError` naming the mask file (the data does not belong to this class list).
        ``skipped`` records frames the reader left out.
        """
        if label_lut is not None and (label_lut.shape != (256,) or label_lut.dtype != np.uint8):
            raise ValueError("label_lut must be a uint8 array of 256 entries")
        self.spec = spec
        self.entries = list(entries)
        self.names = [entry.name for entry in self.entries]
        self.class_names = tuple(class_names)
        self.label_lut = label_lut
        self.skipped = list(skipped)

    @property
    def has_masks(self) -> bool:
        """Whether every frame comes with a mask."""
        return bool(self.entries) and all(entry.mask is not None for entry in self.entries)

    def load(self, index: int) -> Frame:
        entry = self.entries[index]
        image = read_image(entry.image)
        mask = None
        if entry.mask is not None:
            mask = read_mask(entry.mask)
            if mask.shape != image.shape[:2]:
                raise SegcompileError(
                    f"{entry.mask}: mask is {_size_text(mask.shape)} but its image {entry.image} is "
                    f"{_size_text(image.shape)}"
                )
            stored = mask
            if self.label_lut is not None:
                mask = self.label_lut[mask]
            if self.class_names:
                _check_labels(entry.mask, stored, mask, len(self.class_names))
        return Frame(entry.name, image, mask)


def _check_labels(path: Path, stored: np.ndarray, mapped: np.ndarray, num_classes: int) -> None:
    bad = (mapped >= num_classes) & (mapped != 255)
    if bad.any():
        value = int(stored[bad][0])
        raise SegcompileError(
            f"{path}: mask holds label value {value}, which is not one of the {num_classes} classes "
            f"of this dataset (nor 255 = ignore); is this the right dataset or mask file?"
        )


def check_entries(
    spec: str, entries: Sequence[FileEntry], require_masks: bool = True
) -> tuple[list[FileEntry], list[SkippedFrame]]:
    """Split ``entries`` into the readable ones and :class:`SkippedFrame` records, from file headers only.

    A frame is skipped when its image or mask is missing, unreadable, larger than
    :data:`MAX_IMAGE_PIXELS`, or when mask and image sizes differ. One :class:`SkippedFramesWarning`
    summarises what was left out; when nothing is left a :class:`SegcompileError` names the first causes.
    """
    kept: list[FileEntry] = []
    skipped: list[SkippedFrame] = []
    for entry in tqdm(entries, desc=f"checking {spec}", unit="frame", disable=None, leave=False):
        problem = _entry_problem(entry, require_masks)
        if problem is None:
            kept.append(entry)
        else:
            skipped.append(SkippedFrame(entry.name, *problem))
    if not kept:
        causes = "; ".join(frame.reason for frame in skipped[:3]) or "no frames listed"
        raise SegcompileError(f"{spec}: no usable frames ({causes})")
    if skipped:
        warnings.warn(
            f"{spec}: skipped {len(skipped)} of {len(entries)} frames; first: {skipped[0].reason}",
            SkippedFramesWarning,
            stacklevel=2,
        )
    return kept, skipped


def _entry_problem(entry: FileEntry, require_masks: bool) -> tuple[Path, str] | None:
    """(file at fault, why) when ``entry`` cannot be used, from file headers only."""
    try:
        image_wh = image_size(entry.image, "image")
    except SegcompileError as exc:
        return entry.image, str(exc)
    if entry.mask is None:
        return (entry.image, f"{entry.image}: no mask for this image") if require_masks else None
    try:
        mask_wh = image_size(entry.mask, "mask")
    except SegcompileError as exc:
        return entry.mask, str(exc)
    if mask_wh != image_wh:
        return entry.mask, (
            f"{entry.mask}: mask is {mask_wh[0]}x{mask_wh[1]} but its image {entry.image} is "
            f"{image_wh[0]}x{image_wh[1]}"
        )
    return None


# Pillow's guard against decompression bombs warns first and raises only at twice the limit;
# we turn both into a clean error naming the file rather than risk a halfway crash on a huge image.
def _open_checked(path: Path, what: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            handle = Image.open(path)
    except FileNotFoundError as exc:
        if path.is_symlink():
            raise SegcompileError(f"{path}: {what} is a broken symlink (to {os.readlink(path)})") from exc
        raise SegcompileError(f"{path}: {what} file not found") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SegcompileError(f"{path}: {what} is a symlink loop") from exc
        raise SegcompileError(f"{path}: not a readable {what} ({exc})") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SegcompileError(f"{path}: {what} is too large to read safely ({exc})") from exc
    except (SyntaxError, ValueError) as exc:
        raise SegcompileError(f"{path}: not a readable {what} ({exc})") from exc
    width, height = handle.size
    if width * height > MAX_IMAGE_PIXELS:
        handle.close()
        raise SegcompileError(
            f"{path}: {what} is {width}x{height} = {width * height} pixels, above the limit of "
            f"{MAX_IMAGE_PIXELS}; downscale it first"
        )
    return handle


def image_size(path: Path | str, what: str = "image") -> tuple[int, int]:
    """(width, height) from the file header only, with the same errors as :func:`read_image`."""
    path = Path(path)
    with _open_checked(path, what) as handle:
        return handle.size


def read_image(path: Path | str) -> np.ndarray:
    """Decode an image file to uint8 HxWx3 RGB; a clear :class:`SegcompileError` names a bad file."""
    path = Path(path)
    with _open_checked(path, "image") as handle:
        try:
            if handle.mode in ("I;16", "I;16B", "I", "F"):
                raise SegcompileError(f"{path}: {handle.mode} images are not supported; save as 8-bit RGB")
            # RGBA, palette, greyscale and CMYK all become plain RGB; alpha is dropped.
            return np.asarray(handle.convert("RGB"), dtype=np.uint8).copy()
        except (OSError, SyntaxError, ValueError) as exc:
            raise SegcompileError(f"{path}: corrupt or truncated image ({exc})") from exc


def read_mask(path: Path | str) -> np.ndarray:
    """Decode a class-id mask (single channel, 8 bits, or palette indices) to uint8 HxW."""
    path = Path(path)
    with _open_checked(path, "mask") as handle:
        try:
            if handle.mode in ("L", "P"):
                # For palette PNGs (VOC style) the stored indices are the class ids.
                return np.asarray(handle, dtype=np.uint8).copy()
            if handle.mode in ("I;16", "I;16B", "I"):
                values = np.asarray(handle)
                if values.size and (values.min() < 0 or values.max() > 255):
                    raise SegcompileError(
                        f"{path}: mask values must be 0..255 class ids, found up to {values.max()}"
                    )
                return values.astype(np.uint8)
            raise SegcompileError(
                f"{path}: mask has mode {handle.mode}; expected a single-channel image of class ids (L or P)"
            )
        except (OSError, SyntaxError, ValueError) as exc:
            raise SegcompileError(f"{path}: corrupt or truncated mask ({exc})") from exc


def list_files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Regular files (or symlinks to them) directly in ``folder`` with one of ``suffixes``, sorted by name."""
    try:
        with os.scandir(folder) as entries:
            found = [
                Path(entry.path)
                for entry in entries
                if Path(entry.name).suffix.lower() in suffixes
                and not entry.name.startswith(".")
                and _is_file(entry)
            ]
    except FileNotFoundError as exc:
        raise SegcompileError(f"{folder}: folder not found") from exc
    except NotADirectoryError as exc:
        raise SegcompileError(f"{folder}: not a folder") from exc
    except OSError as exc:
        raise SegcompileError(f"{folder}: cannot list folder ({exc})") from exc
    return sorted(found, key=lambda path: path.name)


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()  # follows symlinks; a dangling link is simply not a file
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SegcompileError(f"{entry.path}: symlink loop") from exc
        return False


def find_files(root: Path, suffix: str) -> list[Path]:
    """Files under ``root`` (any depth) whose name ends with ``suffix``, sorted by path.

    Symlinked folders are followed once; a folder that links back to one of its own ancestors (a loop)
    is a :class:`SegcompileError` naming it rather than an endless walk.
    """
    found: list[Path] = []
    # Written by hand because os.walk(followlinks=True) loops forever on such links and
    # Path.rglob does not follow folder symlinks at all (before Python 3.13).
    def walk(folder: Path, ancestors: frozenset[tuple[int, int]]) -> None:
        try:
            info = folder.stat()
            key = (info.st_dev, info.st_ino)
            if key in ancestors:
                raise SegcompileError(f"{folder}: symlink loop (links back to a folder that contains it)")
            with os.scandir(folder) as entries:
                children = sorted(entries, key=lambda entry: entry.name)
        except SegcompileError:
            raise
        except FileNotFoundError as exc:
            raise SegcompileError(f"{folder}: folder not found") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SegcompileError(f"{folder}: symlink loop") from exc
            raise SegcompileError(f"{folder}: cannot list folder ({exc})") from exc
        for entry in children:
            if entry.name.startswith("."):
                continue
            if entry.name.endswith(suffix) and _is_file(entry):
                found.append(Path(entry.path))
            elif _is_dir(entry):
                walk(Path(entry.path), ancestors | {key})

    walk(Path(root), frozenset())
    return sorted(found)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SegcompileError(f"{entry.path}: symlink loop") from exc
        return False


def _size_text(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"
