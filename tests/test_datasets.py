"""Readers for the standard dataset layouts users bring, built as tiny fixture trees in each layout."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from segcompile.data import frames
from segcompile.data.classes import (
    ADE20K32_CLASSES,
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    IGNORE_LABEL,
    VOC_CLASSES,
)
from segcompile.data.frames import SkippedFramesWarning
from segcompile.data.spec import open_dataset
from segcompile.errors import SegcompileError

W, H = 8, 6


def _rgb(path, size=(W, H), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _labels(path, values):
    """A single-channel PNG whose pixels are ``values`` (HxW uint8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, dtype=np.uint8), mode="L").save(path)
    return path


def _stripes(values):
    """An HxW mask whose columns cycle through ``values``."""
    row = np.resize(np.asarray(values, dtype=np.uint8), W)
    return np.tile(row, (H, 1))


# -- Cityscapes -----------------------------------------------------------------------------------

CITY_FRAMES = {
    "train": {"aachen": ["aachen_000000_000019", "aachen_000001_000019"], "bochum": ["bochum_000000_000313"]},
    "val": {"frankfurt": ["frankfurt_000000_000294", "frankfurt_000001_000538"]},
}
# labelId -> the class its trainId names (None = ignored), from the Cityscapes label table.
CITY_IDS = {7: "road", 26: "car", 33: "bicycle", 24: "person", 0: None, 9: None, 30: None, 21: "vegetation"}


def _cityscapes(root, frames_by_split=CITY_FRAMES):
    for split, cities in frames_by_split.items():
        for city, names in cities.items():
            for index, name in enumerate(names):
                _rgb(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", seed=index)
                mask = root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png"
                _labels(mask, _stripes(list(CITY_IDS)))
    return root


def test_cityscapes_label_ids_become_the_19_train_ids(tmp_path):
    dataset = open_dataset(f"cityscapes:{_cityscapes(tmp_path)}:val")
    assert dataset.class_names == CITYSCAPES_CLASSES and len(dataset.class_names) == 19
    mask = dataset[0].mask
    for column, expected in enumerate(np.resize(list(CITY_IDS.values()), W)):
        value = int(mask[0, column])
        if expected is None:
            assert value == IGNORE_LABEL
        else:
            assert CITYSCAPES_CLASSES[value] == expected


def test_cityscapes_reads_every_city_of_a_split(tmp_path):
    root = _cityscapes(tmp_path)
    train = open_dataset(f"cityscapes:{root}:train")
    assert train.names == ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"]
    assert len(open_dataset(f"cityscapes:{root}:val")) == 2
    assert train.skipped == []


def test_a_spec_without_split_calibrates_on_train_and_evaluates_on_val(tmp_path):
    root = _cityscapes(tmp_path)
    calib = open_dataset(f"cityscapes:{root}", role="calib")
    evaluation = open_dataset(f"cityscapes:{root}", role="eval")
    assert sorted(calib.names) == open_dataset(f"cityscapes:{root}:train").names
    assert evaluation.names == open_dataset(f"cityscapes:{root}:val").names
    assert not set(calib.names) & set(evaluation.names)
    # the calibration order is seeded: reopening gives the same frames in the same order
    assert open_dataset(f"cityscapes:{root}", role="calib").names == calib.names
    assert calib[0].image.tobytes() == open_dataset(f"cityscapes:{root}", role="calib")[0].image.tobytes()


def test_an_explicit_split_wins_over_the_role(tmp_path):
    root = _cityscapes(tmp_path)
    assert open_dataset(f"cityscapes:{root}:val", role="calib").names == open_dataset(
        f"cityscapes:{root}:val"
    ).names


def test_cityscapes_frame_without_its_label_file_is_skipped_and_counted(tmp_path):
    root = _cityscapes(tmp_path)
    (root / "gtFine" / "train" / "bochum" / "bochum_000000_000313_gtFine_labelIds.png").unlink()
    with pytest.warns(SkippedFramesWarning, match="skipped 1 of 3"):
        dataset = open_dataset(f"cityscapes:{root}:train")
    assert len(dataset) == 2 and "bochum_000000_000313" not in dataset.names
    [skipped] = dataset.skipped
    assert skipped.name == "bochum_000000_000313"
    assert skipped.path.name == "bochum_000000_000313_gtFine_labelIds.png" and "not found" in skipped.reason


def test_calibration_order_carries_the_skipped_frames(tmp_path):
    root = _cityscapes(tmp_path)
    (root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.warns(SkippedFramesWarning):
        calib = open_dataset(f"cityscapes:{root}", role="calib")
    assert [frame.name for frame in calib.skipped] == ["aachen_000000_000019"]


def test_cityscapes_without_any_usable_frame_is_an_error(tmp_path):
    root = _cityscapes(tmp_path, {"val": {"lindau": ["lindau_000000_000019"]}})
    (root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png").write_bytes(b"junk")
    with pytest.raises(SegcompileError, match="no usable frames.*lindau_000000_000019_gtFine_labelIds.png"):
        open_dataset(f"cityscapes:{root}:val")


def test_cityscapes_missing_split_folder_is_named(tmp_path):
    root = _cityscapes(tmp_path, {"val": CITY_FRAMES["val"]})
    with pytest.raises(SegcompileError, match=r"leftImg8bit/train.*not found"):
        open_dataset(f"cityscapes:{root}:train")


def test_unknown_split_is_named(tmp_path):
    root = _cityscapes(tmp_path)
    with pytest.raises(SegcompileError, match="unknown split 'training'"):
        open_dataset(f"cityscapes:{root}:training")


def test_a_city_folder_linking_back_to_its_split_is_a_symlink_loop_error(tmp_path):
    root = _cityscapes(tmp_path)
    loop = root / "leftImg8bit" / "val" / "frankfurt" / "again"
    os.symlink(root / "leftImg8bit" / "val", loop)
    with pytest.raises(SegcompileError, match=r"frankfurt/again.*symlink loop"):
        open_dataset(f"cityscapes:{root}:val")


def test_a_symlinked_city_folder_that_is_no_loop_is_followed(tmp_path):
    elsewhere = _cityscapes(tmp_path / "elsewhere", {"val": {"lindau": ["lindau_000000_000019"]}})
    root = _cityscapes(tmp_path / "cityscapes")
    for kind in ("leftImg8bit", "gtFine"):
        os.symlink(elsewhere / kind / "val" / "lindau", root / kind / "val" / "lindau")
    assert "lindau_000000_000019" in open_dataset(f"cityscapes:{root}:val").names


def test_an_empty_cityscapes_split_is_named(tmp_path):
    root = _cityscapes(tmp_path)
    (root / "leftImg8bit" / "test").mkdir()
    (root / "gtFine" / "test").mkdir()
    with pytest.raises(SegcompileError, match=r"leftImg8bit/test: no \*_leftImg8bit.png images"):
        open_dataset(f"cityscapes:{root}:test")


# -- ADE20K and ADE20K32 ---------------------------------------------------------------------------

ADE_STORED = [0, 1, 31, 32, 150]


def _ade(root, values=ADE_STORED, names=("ADE_val_00000001", "ADE_val_00000002")):
    for split, prefix in (("validation", "ADE_val"), ("training", "ADE_train")):
        for index, name in enumerate(names):
            name = name.replace("ADE_val", prefix)
            _rgb(root / "images" / split / f"{name}.jpg", seed=index)
            _labels(root / "annotations" / split / f"{name}.png", _stripes(values))
    return root


def test_ade20k32_keeps_labels_1_to_31_and_makes_everything_else_other(tmp_path):
    root = _ade(tmp_path / "ADEChallengeData2016")
    dataset = open_dataset(f"ade20k32:{root}:val")
    assert dataset.class_names == ADE20K32_CLASSES and len(ADE20K32_CLASSES) == 32
    row = dataset[0].mask[0, : len(ADE_STORED)].tolist()
    assert row == [0, 1, 31, 0, 0]
    assert [ADE20K32_CLASSES[value] for value in row[1:3]] == ["wall", "armchair"]


def test_ade20k_full_ignores_unlabelled_and_shifts_labels_down_by_one(tmp_path):
    root = _ade(tmp_path / "ADEChallengeData2016")
    dataset = open_dataset(f"ade20k:{root}:val")
    assert len(dataset.class_names) == 150
    row = dataset[0].mask[0, : len(ADE_STORED)].tolist()
    assert row == [IGNORE_LABEL, 0, 30, 31, 149]
    assert [ADE20K_CLASSES[value] for value in row[1:]] == ["wall", "armchair", "seat", "flag"]


def test_ade20k_root_may_be_the_folder_holding_adechallengedata2016(tmp_path):
    _ade(tmp_path / "ADEChallengeData2016")
    dataset = open_dataset(f"ade20k32:{tmp_path}", role="eval")
    assert dataset.names == ["ADE_val_00000001", "ADE_val_00000002"]
    calib = open_dataset(f"ade20k32:{tmp_path}", role="calib")
    assert sorted(calib.names) == ["ADE_train_00000001", "ADE_train_00000002"]


def test_label_values_beyond_the_dataset_classes_are_an_error_naming_the_mask(tmp_path):
    root = _ade(tmp_path, values=[1, 2, 200])
    dataset = open_dataset(f"ade20k:{root}:val")
    with pytest.raises(SegcompileError, match=r"ADE_val_00000001\.png.*label value 200.*150 classes"):
        dataset[0]


def test_mask_of_another_size_is_skipped_and_names_the_mask(tmp_path):
    root = _ade(tmp_path)
    _labels(root / "annotations" / "validation" / "ADE_val_00000002.png", np.zeros((3, 3), np.uint8))
    with pytest.warns(SkippedFramesWarning):
        dataset = open_dataset(f"ade20k:{root}:val")
    assert dataset.names == ["ADE_val_00000001"]
    assert "3x3" in dataset.skipped[0].reason and dataset.skipped[0].path.name == "ADE_val_00000002.png"


def test_corrupt_image_is_skipped_with_its_name(tmp_path):
    root = _ade(tmp_path)
    (root / "images" / "validation" / "ADE_val_00000001.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.warns(SkippedFramesWarning, match="ADE_val_00000001.jpg"):
        dataset = open_dataset(f"ade20k32:{root}:val")
    assert dataset.names == ["ADE_val_00000002"] and len(dataset.skipped) == 1


def test_image_above_the_pixel_limit_is_refused_with_its_name(tmp_path, monkeypatch):
    root = _ade(tmp_path)
    _rgb(root / "images" / "validation" / "ADE_val_00000002.jpg", size=(40, 30))
    _labels(root / "annotations" / "validation" / "ADE_val_00000002.png", np.ones((30, 40), np.uint8))
    monkeypatch.setattr(frames, "MAX_IMAGE_PIXELS", 1000)
    with pytest.warns(SkippedFramesWarning):
        dataset = open_dataset(f"ade20k32:{root}:val")
    assert dataset.names == ["ADE_val_00000001"]
    assert "40x30 = 1200 pixels, above the limit of 1000" in dataset.skipped[0].reason


def test_a_decompression_bomb_is_refused_without_decoding_it(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 8_000)).save(bomb)  # 96 Mpx, a few kB on disk
    assert bomb.stat().st_size < 100_000
    with pytest.raises(SegcompileError, match=r"bomb\.png.*(too large|above the limit)"):
        frames.read_image(bomb)


# -- VOC 2012 --------------------------------------------------------------------------------------


def _palette_png(path, values):
    """A VOC-style palette PNG: pixel values are palette indices, the colours only for display."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(values, dtype=np.uint8), mode="P")
    palette = np.random.default_rng(1).integers(0, 256, size=768, dtype=np.uint8)
    image.putpalette(palette.tolist())
    image.save(path)
    return path


def _voc(root, splits=None):
    splits = splits or {"train": ["2007_000032", "2007_000039", "2007_000063"], "val": ["2007_000033"]}
    devkit = root / "VOCdevkit" / "VOC2012"
    for split, names in splits.items():
        lists = devkit / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text("".join(f"{name}\n" for name in names))
        for index, name in enumerate(names):
            _rgb(devkit / "JPEGImages" / f"{name}.jpg", seed=index)
            _palette_png(devkit / "SegmentationClass" / f"{name}.png", _stripes([0, 15, 255, 7]))
    return devkit


def test_voc_reads_palette_indices_as_classes_and_keeps_the_255_border(tmp_path):
    _voc(tmp_path)
    dataset = open_dataset(f"voc2012:{tmp_path}:val")
    assert dataset.class_names == VOC_CLASSES and dataset.names == ["2007_000033"]
    row = dataset[0].mask[0, :4].tolist()
    assert row == [0, 15, IGNORE_LABEL, 7]
    assert [VOC_CLASSES[value] for value in (row[1], row[3])] == ["person", "car"]


def test_voc_split_lists_decide_the_frames_and_roles_pick_train_or_val(tmp_path):
    devkit = _voc(tmp_path)
    assert len(open_dataset(f"voc2012:{devkit}:train")) == 3
    assert open_dataset(f"voc2012:{tmp_path / 'VOCdevkit'}", role="eval").names == ["2007_000033"]
    assert sorted(open_dataset(f"voc2012:{devkit}", role="calib").names) == [
        "2007_000032", "2007_000039", "2007_000063"
    ]


def test_voc_frame_listed_without_an_image_is_skipped_and_counted(tmp_path):
    devkit = _voc(tmp_path)
    (devkit / "JPEGImages" / "2007_000039.jpg").unlink()
    with pytest.warns(SkippedFramesWarning, match="2007_000039.jpg"):
        dataset = open_dataset(f"voc2012:{devkit}:train")
    assert dataset.names == ["2007_000032", "2007_000063"]
    assert [frame.name for frame in dataset.skipped] == ["2007_000039"]


def test_voc_mask_with_values_beyond_21_classes_is_an_error(tmp_path):
    devkit = _voc(tmp_path)
    _palette_png(devkit / "SegmentationClass" / "2007_000033.png", _stripes([0, 40]))
    with pytest.raises(SegcompileError, match=r"2007_000033\.png.*label value 40.*21 classes"):
        open_dataset(f"voc2012:{devkit}:val")[0]


def test_voc_root_without_jpegimages_is_named(tmp_path):
    with pytest.raises(SegcompileError, match=f"{tmp_path}.*JPEGImages"):
        open_dataset(f"voc2012:{tmp_path}:val")


def test_a_mask_that_is_a_symlink_loop_is_skipped_with_its_name(tmp_path):
    devkit = _voc(tmp_path)
    looping = devkit / "SegmentationClass" / "2007_000063.png"
    looping.unlink()
    os.symlink(looping, looping)
    with pytest.warns(SkippedFramesWarning):
        dataset = open_dataset(f"voc2012:{devkit}:train")
    assert "2007_000063.png: mask is a symlink loop" in dataset.skipped[0].reason


# -- COCOSeg21 -------------------------------------------------------------------------------------

CW, CH = 20, 16
PERSON, CAR, BACKPACK = 1, 3, 27  # COCO category ids: VOC person (15), VOC car (7), not a VOC class


def _rle(box):
    from pycocotools import mask as mask_utils

    x0, y0, x1, y1 = box
    binary = np.zeros((CH, CW), dtype=np.uint8, order="F")
    binary[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(binary))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _coco(root, annotations=None, split="val"):
    images = [
        {"id": 1, "file_name": "000000000001.jpg", "width": CW, "height": CH},
        {"id": 2, "file_name": "000000000002.jpg", "width": CW, "height": CH},
        {"id": 3, "file_name": "000000000003.jpg", "width": CW, "height": CH},
    ]
    if annotations is None:
        annotations = [
            # a person polygon over columns 2..9, a car RLE over columns 6..13: they overlap on 6..9
            {"id": 10, "image_id": 1, "category_id": PERSON, "iscrowd": 0,
             "segmentation": [[2, 2, 10, 2, 10, 12, 2, 12]]},
            {"id": 11, "image_id": 1, "category_id": CAR, "iscrowd": 0, "segmentation": _rle((6, 4, 14, 10))},
            # image 2 only holds a class COCOSeg21 does not have
            {"id": 12, "image_id": 2, "category_id": BACKPACK, "iscrowd": 0,
             "segmentation": [[0, 0, 20, 0, 20, 16, 0, 16]]},
            # image 3 has no annotation at all
        ]
    for index, record in enumerate(images):
        _rgb(root / f"{split}2017" / record["file_name"], size=(CW, CH), seed=index)
    categories = [{"id": i, "name": str(i)} for i in (PERSON, CAR, BACKPACK)]
    path = root / "annotations" / f"instances_{split}2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def test_cocoseg21_renders_polygon_and_rle_instances_as_voc_classes(tmp_path):
    dataset = open_dataset(f"cocoseg21:{_coco(tmp_path)}:val")
    assert dataset.class_names == VOC_CLASSES
    assert dataset.names == ["000000000001", "000000000002", "000000000003"]
    expected = np.zeros((CH, CW), np.uint8)
    expected[2:12, 2:10] = VOC_CLASSES.index("person")  # the polygon (2,2)-(10,12)
    expected[4:10, 6:14] = VOC_CLASSES.index("car")  # the RLE box
    expected[4:10, 6:10] = IGNORE_LABEL  # under both: two different classes
    np.testing.assert_array_equal(dataset[0].mask, expected)


def test_cocoseg21_overlapping_instances_of_one_class_keep_the_class(tmp_path):
    annotations = [
        {"id": 1, "image_id": 1, "category_id": CAR, "iscrowd": 0, "segmentation": _rle((0, 0, 10, 10))},
        {"id": 2, "image_id": 1, "category_id": CAR, "iscrowd": 0, "segmentation": _rle((5, 5, 15, 15))},
    ]
    mask = open_dataset(f"cocoseg21:{_coco(tmp_path, annotations)}:val")[0].mask
    assert (mask[5:10, 5:10] == VOC_CLASSES.index("car")).all()
    assert IGNORE_LABEL not in mask


def test_cocoseg21_images_without_voc_instances_are_all_background(tmp_path):
    dataset = open_dataset(f"cocoseg21:{_coco(tmp_path)}:val")
    assert not dataset[1].mask.any()  # only a backpack
    assert not dataset[2].mask.any()  # no annotation


def test_cocoseg21_image_missing_from_the_folder_is_skipped_and_counted(tmp_path):
    root = _coco(tmp_path)
    (root / "val2017" / "000000000002.jpg").unlink()
    with pytest.warns(SkippedFramesWarning, match="000000000002.jpg"):
        dataset = open_dataset(f"cocoseg21:{root}:val")
    assert dataset.names == ["000000000001", "000000000003"] and len(dataset.skipped) == 1


def test_cocoseg21_image_of_another_size_than_the_json_says_is_skipped(tmp_path):
    root = _coco(tmp_path)
    _rgb(root / "val2017" / "000000000003.jpg", size=(CW + 1, CH))
    with pytest.warns(SkippedFramesWarning):
        dataset = open_dataset(f"cocoseg21:{root}:val")
    assert "21x16" in dataset.skipped[0].reason and "instances_val2017.json" in dataset.skipped[0].reason


def test_cocoseg21_broken_annotation_file_is_named(tmp_path):
    root = _coco(tmp_path)
    (root / "annotations" / "instances_val2017.json").write_text('{"images": [')
    with pytest.raises(SegcompileError, match="instances_val2017.json.*not a readable"):
        open_dataset(f"cocoseg21:{root}:val")


def test_cocoseg21_undecodable_annotation_is_an_error_naming_file_and_annotation(tmp_path):
    bad_rle = {"size": [3, 3], "counts": "z"}
    broken = [{"id": 77, "image_id": 1, "category_id": PERSON, "segmentation": bad_rle}]
    dataset = open_dataset(f"cocoseg21:{_coco(tmp_path, broken)}:val")
    with pytest.raises(SegcompileError, match="instances_val2017.json: annotation 77 of image 1 cannot be"):
        dataset[0]


def test_cocoseg21_calibration_without_train2017_says_how_to_calibrate(tmp_path):
    root = _coco(tmp_path)
    assert len(open_dataset(f"cocoseg21:{root}", role="eval")) == 3
    with pytest.raises(SegcompileError, match="train2017.*subset:LISTFILE"):
        open_dataset(f"cocoseg21:{root}", role="calib")


def test_cocoseg21_reader_prints_nothing_on_stdout(tmp_path, capfd):
    open_dataset(f"cocoseg21:{_coco(tmp_path)}:val")[0]
    assert capfd.readouterr().out == ""


# -- plain folders keep their strict checks ---------------------------------------------------------


def test_a_looping_symlink_in_a_plain_folder_is_an_error_naming_it(tmp_path):
    _rgb(tmp_path / "img" / "a.png")
    os.symlink(tmp_path / "img" / "loop.png", tmp_path / "img" / "loop.png")
    with pytest.raises(SegcompileError, match=r"loop\.png: symlink loop"):
        open_dataset(f"folder:{tmp_path / 'img'}")


def test_standard_readers_warn_once_per_dataset_not_per_frame(tmp_path):
    devkit = _voc(tmp_path)
    for name in ("2007_000032", "2007_000039"):
        (devkit / "SegmentationClass" / f"{name}.png").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = open_dataset(f"voc2012:{devkit}:train")
    assert len([w for w in caught if issubclass(w.category, SkippedFramesWarning)]) == 1
    assert len(dataset.skipped) == 2 and dataset.names == ["2007_000063"]
