"""Class names of the datasets the zoo is trained on, in label order."""

from __future__ import annotations

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

# The 21 PASCAL VOC classes; COCOSeg21 maps COCO categories onto the same list.
VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# MLPerf's ADE20K32: ADE20K (SceneParsing) labels 1-31 kept, everything else is class 0.
ADE20K32_CLASSES: tuple[str, ...] = (
    "other",
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
)

# The bundled demo scenes (segcompile/data/demo_scenes.py renders them).
DEMO_CLASSES: tuple[str, ...] = (
    "background",
    "floor",
    "duck",
    "teddy",
    "mug",
    "ball",
    "robot",
    "block",
)

DATASET_CLASSES: dict[str, tuple[str, ...]] = {
    "cityscapes": CITYSCAPES_CLASSES,
    "cocoseg21": VOC_CLASSES,
    "voc2012": VOC_CLASSES,
    "ade20k32": ADE20K32_CLASSES,
    "demo": DEMO_CLASSES,
}

IGNORE_LABEL = 255
