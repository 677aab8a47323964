"""COCOSeg21: COCO images with the instance masks of the 20 PASCAL VOC object classes, as in torchvision's
segmentation reference and TI's edgeai benchmark.

Layout: ``ROOT/val2017/*.jpg`` and ``ROOT/annotations/instances_val2017.json`` (``train2017`` likewise).
Polygons and RLE are decoded by pycocotools; pixels covered by instances of two different classes are
ignored (255); pixels no instance covers, and images without annotations, are background (0).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segcompile.data.classes import IGNORE_LABEL, VOC_CLASSES
from segcompile.data.frames import (
    Frame,
    SegmentationDataset,
    SkippedFrame,
    SkippedFramesWarning,
    image_size,
    read_image,
)
from segcompile.data.subsets import for_role, parse_root_and_split, split_for_role
from segcompile.errors import SegcompileError

SPLITS: tuple[str, ...] = ("train", "val")
# COCO category id of each VOC class, indexed by VOC class id (0 = background has no category).
COCO_CATEGORY_IDS: tuple[int, ...] = (
    0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72,
)
_VOC_ID_OF_CATEGORY = {category: voc_id for voc_id, category in enumerate(COCO_CATEGORY_IDS) if voc_id}


@dataclass(frozen=True)
class CocoImage:
    """One COCO image: its frame name, file, id in the annotation file and size from the annotation file."""

    name: str
    path: Path
    image_id: int
    width: int
    height: int


class CocoSeg21Dataset(SegmentationDataset):
    """COCO images with 21-class VOC masks rendered from the instance annotations."""

    def __init__(self, spec: str, annotations: Path, coco, images: list[CocoImage],
                 skipped: list[SkippedFrame]) -> None:
        self.spec = spec
        self.annotations = annotations
        self.coco = coco
        self.images = images
        self.names = [image.name for image in images]
        self.class_names = VOC_CLASSES
        self.skipped = skipped

    def load(self, index: int) -> Frame:
        entry = self.images[index]
        image = read_image(entry.path)
        if image.shape[:2] != (entry.height, entry.width):
            raise SegcompileError(
                f"{entry.path}: image is {image.shape[1]}x{image.shape[0]} but {self.annotations} says "
                f"{entry.width}x{entry.height}"
            )
        return Frame(entry.name, image, self.mask(entry))

    def mask(self, entry: CocoImage) -> np.ndarray:
        """The 21-class mask of one image (uint8, 255 where instances of different classes overlap)."""
        covered = np.zeros((len(VOC_CLASSES), entry.height, entry.width), dtype=bool)
        ids = self.coco.getAnnIds(imgIds=[entry.image_id], catIds=list(_VOC_ID_OF_CATEGORY))
        for annotation in self.coco.loadAnns(ids):
            try:
                with warnings.catch_warnings():
                    # pycocotools 2.0.x trips numpy 2's copy= deprecation inside its own decoder
                    warnings.simplefilter("ignore", DeprecationWarning)
                    instance = self.coco.annToMask(annotation)
            except Exception as exc:  # pycocotools raises bare TypeError/ValueError/Exception on bad input
                raise SegcompileError(
                    f"{self.annotations}: annotation {annotation.get('id')} of image {entry.image_id} "
                    f"cannot be decoded ({exc})"
                ) from exc
            if instance.shape != covered.shape[1:]:
                raise SegcompileError(
                    f"{self.annotations}: annotation {annotation.get('id')} decodes to "
                    f"{instance.shape[1]}x{instance.shape[0]}, not the image's {entry.width}x{entry.height}"
                )
            covered[_VOC_ID_OF_CATEGORY[annotation["category_id"]]] |= instance.astype(bool)
        classes_here = covered.sum(axis=0)
        mask = np.argmax(covered, axis=0).astype(np.uint8)  # 0 where nothing covers the pixel
        mask[classes_here > 1] = IGNORE_LABEL
        return mask


def open_coco(root: Path | str, split: str = "val", spec: str | None = None) -> CocoSeg21Dataset:
    """COCOSeg21 frames of ``ROOT/<split>2017`` from ``ROOT/annotations/instances_<split>2017.json``."""
    from pycocotools.coco import COCO

    if split not in SPLITS:
        raise SegcompileError(f"cocoseg21: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    root = Path(root)
    spec = spec or f"cocoseg21:{root}:{split}"
    images_dir = root / f"{split}2017"
    annotations = root / "annotations" / f"instances_{split}2017.json"
    if not images_dir.is_dir():
        raise SegcompileError(f"{images_dir}: folder not found (expected the COCO layout under {root})")
    content = _read_annotations(annotations)
    coco = COCO()
    coco.dataset = content
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        coco.createIndex()

    images: list[CocoImage] = []
    skipped: list[SkippedFrame] = []
    for record in tqdm(content["images"], desc=f"checking {spec}", unit="frame", disable=None, leave=False):
        path = images_dir / str(record["file_name"])
        name = Path(record["file_name"]).stem
        entry = CocoImage(name, path, record["id"], record["width"], record["height"])
        try:
            width, height = image_size(path)
            if (width, height) != (entry.width, entry.height):
                raise SegcompileError(
                    f"{path}: image is {width}x{height} but {annotations} says {entry.width}x{entry.height}"
                )
        except SegcompileError as exc:
            skipped.append(SkippedFrame(entry.name, path, str(exc)))
            continue
        images.append(entry)
    if not images:
        causes = "; ".join(frame.reason for frame in skipped[:3]) or f"{annotations} lists no images"
        raise SegcompileError(f"{spec}: no usable frames ({causes})")
    if skipped:
        warnings.warn(
            f"{spec}: skipped {len(skipped)} of {len(content['images'])} frames; first: {skipped[0].reason}",
            SkippedFramesWarning,
            stacklevel=2,
        )
    images.sort(key=lambda image: image.name)
    return CocoSeg21Dataset(spec, annotations, coco, images, skipped)


def _read_annotations(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            content = json.load(handle)
    except FileNotFoundError as exc:
        raise SegcompileError(f"{path}: annotation file not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SegcompileError(f"{path}: not a readable COCO annotation file ({exc})") from exc
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise SegcompileError(f"{path}: not a COCO instances file (no 'images' list)")
    content.setdefault("annotations", [])
    content.setdefault("categories", [])
    if not isinstance(content["annotations"], list):
        raise SegcompileError(f"{path}: 'annotations' must be a list")
    for record in content["images"]:
        if not isinstance(record, dict) or not all(
            key in record for key in ("id", "file_name", "width", "height")
        ):
            raise SegcompileError(f"{path}: image record {record!r:.80} lacks id, file_name, width or height")
    names = [Path(str(record["file_name"])).stem for record in content["images"]]
    if len(set(names)) != len(names):
        raise SegcompileError(f"{path}: two images share a file name")
    for annotation in content["annotations"]:
        if not isinstance(annotation, dict) or not all(
            key in annotation for key in ("image_id", "category_id", "segmentation")
        ):
            raise SegcompileError(
                f"{path}: annotation {annotation!r:.80} lacks image_id, category_id or segmentation"
            )
    return content


def open_coco_spec(argument: str, role: str | None) -> SegmentationDataset:
    """``cocoseg21:ROOT[:train|val]``; without a split the role picks train2017 (calib) or val2017 (eval)."""
    root, split = parse_root_and_split("cocoseg21", argument, SPLITS)
    chosen, shuffle = split_for_role("cocoseg21", split, role, "train", "val")
    if shuffle and split is None and not (root / "train2017").is_dir():
        raise SegcompileError(
            f"cocoseg21:{argument}: calibration defaults to train2017, which is not in {root}; "
            f"calibrate on a subset list of val2017 that excludes the evaluation frames (subset:LISTFILE)"
        )
    dataset = open_coco(root, chosen, spec=f"cocoseg21:{root}:{chosen}")
    return for_role(dataset, shuffle, f"cocoseg21:{argument}")
