"""The data module: the shipped demo scenes, dataset specs, the folder reader and preprocessing."""

from __future__ import annotations

import io

import numpy as np
import pytest
import yaml
from PIL import Image

from segcompile.data.classes import DEMO_CLASSES
from segcompile.data.demo import ENV_VAR, demo_root, open_demo
from segcompile.data.frames import Frame, read_mask
from segcompile.data.preprocess import preprocess, resize_mask
from segcompile.data.spec import accepted_forms, open_dataset
from segcompile.errors import SegcompileError
from segcompile.modelinfo import ModelInfo

DOCUMENTED_COUNTS = {"train": 480, "calib": 48, "eval": 96}


@pytest.fixture(scope="module")
def demo_splits():
    return {split: open_demo(split) for split in DOCUMENTED_COUNTS}


# -- the shipped demo set -------------------------------------------------------------------------


def test_demo_splits_have_the_documented_frame_counts(demo_splits):
    description = yaml.safe_load((demo_root() / "dataset.yaml").read_text())
    for split, count in DOCUMENTED_COUNTS.items():
        assert len(demo_splits[split]) == count
        assert description["splits"][split]["frames"] == count


def test_demo_splits_are_disjoint(demo_splits):
    train, calib, evaluation = (set(demo_splits[s].names) for s in ("train", "calib", "eval"))
    assert not train & calib and not train & evaluation and not calib & evaluation


def test_demo_frames_are_160x128_with_masks_of_the_same_size_and_known_class_ids(demo_splits):
    for dataset in demo_splits.values():
        for frame in dataset:
            assert frame.image.shape == (128, 160, 3) and frame.image.dtype == np.uint8
            assert frame.mask is not None and frame.mask.shape == (128, 160)
            assert int(frame.mask.max()) < len(DEMO_CLASSES)


def test_every_demo_class_appears_in_the_eval_split(demo_splits):
    seen = np.zeros(len(DEMO_CLASSES), dtype=bool)
    for frame in demo_splits["eval"]:
        seen[np.unique(frame.mask)] = True
    assert seen.all(), [name for name, hit in zip(DEMO_CLASSES, seen, strict=True) if not hit]


def test_demo_set_names_its_classes_and_stays_small(demo_splits):
    assert demo_splits["eval"].class_names == DEMO_CLASSES
    total = sum(path.stat().st_size for path in demo_root().rglob("*") if path.is_file())
    assert total < 12 * 1024 * 1024


def test_demo_spec_without_a_split_follows_the_role_or_takes_every_frame():
    assert open_dataset("demo", role="calib").names == open_dataset("demo:calib").names
    assert len(open_dataset("demo")) == sum(DOCUMENTED_COUNTS.values())
    assert open_dataset("demo:eval", role="calib").spec == "demo:eval"


def test_demo_data_location_follows_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(SegcompileError, match=ENV_VAR):
        open_demo("eval")


def test_unknown_demo_split_is_rejected():
    with pytest.raises(SegcompileError, match="train|calib|eval"):
        open_dataset("demo:validation")


# -- re-rendering (needs the optional pybullet) ---------------------------------------------------


def test_rendering_is_deterministic_and_reproduces_the_shipped_frames():
    pytest.importorskip(
        "pybullet", reason="pybullet (the optional `segcompile[render]` extra) is not installed"
    )
    from segcompile.data.demo_scenes import SceneRenderer, encode_jpeg, frame_name

    description = yaml.safe_load((demo_root() / "dataset.yaml").read_text())
    with SceneRenderer(seed=description["generator"]["seed"]) as renderer:
        first = [renderer.render("eval", 1), renderer.render("calib", 0)]
        again = [renderer.render("eval", 1), renderer.render("calib", 0)]
    for (image, mask), (image_again, mask_again) in zip(first, again, strict=True):
        assert image.tobytes() == image_again.tobytes()
        assert mask.tobytes() == mask_again.tobytes()
    for (image, mask), (split, index) in zip(first, [("eval", 1), ("calib", 0)], strict=True):
        name = frame_name(split, index)
        np.testing.assert_array_equal(mask, read_mask(demo_root() / "masks" / f"{name}.png"))
        shipped = np.asarray(Image.open(demo_root() / "images" / f"{name}.jpg"), dtype=np.float64)
        # Encoded the way the generator does it, the fresh frame decodes to the shipped pixels
        # (a tolerance only for a different libjpeg build rounding its transforms differently).
        fresh = np.asarray(Image.open(io.BytesIO(encode_jpeg(image))), dtype=np.float64)
        assert np.abs(shipped - fresh).mean() < 0.25


# -- specs, folders and hostile input -------------------------------------------------------------


def _write_image(path, size=(8, 6), colour=(200, 30, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _write_mask(path, size=(8, 6), value=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


def test_folder_spec_pairs_images_with_masks_by_stem(tmp_path):
    _write_image(tmp_path / "img" / "b.jpg")
    _write_image(tmp_path / "img" / "a.png", colour=(1, 2, 3))
    _write_mask(tmp_path / "lbl" / "a.png", value=3)
    _write_mask(tmp_path / "lbl" / "b.png", value=5)
    dataset = open_dataset(f"folder:{tmp_path / 'img'}:{tmp_path / 'lbl'}")
    assert dataset.names == ["a", "b"]
    frame = dataset[0]
    assert frame.image[0, 0].tolist() == [1, 2, 3]
    assert frame.mask.shape == (6, 8) and set(np.unique(frame.mask)) == {3}
    assert set(np.unique(dataset[-1].mask)) == {5}


def test_bare_directory_uses_images_and_masks_subfolders_and_names_classes(tmp_path):
    _write_image(tmp_path / "images" / "x.png")
    _write_mask(tmp_path / "masks" / "x.png")
    (tmp_path / "dataset.yaml").write_text("classes: [sky, road]\n")
    dataset = open_dataset(str(tmp_path))
    assert dataset.names == ["x"] and dataset[0].mask is not None
    assert dataset.class_names == ("sky", "road")


def test_bare_directory_without_subfolders_is_images_without_masks(tmp_path):
    _write_image(tmp_path / "one.jpg")
    frame = open_dataset(str(tmp_path))[0]
    assert frame.name == "one" and frame.mask is None


def test_missing_mask_error_names_the_image(tmp_path):
    _write_image(tmp_path / "img" / "a.png")
    _write_image(tmp_path / "img" / "lonely.png")
    _write_mask(tmp_path / "lbl" / "a.png")
    with pytest.raises(SegcompileError, match="lonely.png"):
        open_dataset(f"folder:{tmp_path / 'img'}:{tmp_path / 'lbl'}")


def test_mask_of_a_different_size_error_names_the_mask(tmp_path):
    _write_image(tmp_path / "img" / "a.png", size=(8, 6))
    _write_mask(tmp_path / "lbl" / "a.png", size=(6, 8))
    with pytest.raises(SegcompileError, match=r"lbl/a\.png.*6x8.*8x6"):
        open_dataset(f"folder:{tmp_path / 'img'}:{tmp_path / 'lbl'}")


def test_corrupt_image_error_names_the_file(tmp_path):
    _write_image(tmp_path / "img" / "good.png")
    (tmp_path / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(SegcompileError, match="broken.jpg"):
        open_dataset(f"folder:{tmp_path / 'img'}")


def test_truncated_image_fails_on_reading_with_its_name(tmp_path):
    path = _write_image(tmp_path / "img" / "cut.png", size=(64, 64))
    noisy = np.random.RandomState(0).randint(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(path)
    path.write_bytes(path.read_bytes()[:-400])  # header intact, pixel data cut short
    dataset = open_dataset(f"folder:{tmp_path / 'img'}")
    with pytest.raises(SegcompileError, match="cut.png"):
        dataset[0]


def test_colour_mask_is_rejected_with_its_name(tmp_path):
    _write_image(tmp_path / "img" / "a.png")
    _write_image(tmp_path / "lbl" / "a.png")  # an RGB picture where class ids were expected
    dataset = open_dataset(f"folder:{tmp_path / 'img'}:{tmp_path / 'lbl'}")
    with pytest.raises(SegcompileError, match=r"lbl/a\.png.*single-channel"):
        dataset[0]


def test_empty_folder_error_names_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegcompileError, match="empty.*no images"):
        open_dataset(f"folder:{tmp_path / 'empty'}")


def test_unknown_scheme_lists_the_accepted_forms():
    with pytest.raises(SegcompileError) as caught:
        open_dataset("kitti:/data/kitti")
    message = str(caught.value)
    assert "kitti" in message
    for form in accepted_forms():
        assert form in message


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(SegcompileError, match="no such folder"):
        open_dataset(str(tmp_path / "nowhere"))


def test_frame_rejects_a_mask_that_does_not_fit_its_image():
    with pytest.raises(SegcompileError, match="bad"):
        Frame("bad", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8))


# -- preprocessing --------------------------------------------------------------------------------


def test_preprocess_normalises_a_known_pixel_into_nchw_float32():
    info = ModelInfo("m", 8, (4, 3), mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0))
    image = np.zeros((3, 4, 3), np.uint8)
    image[1, 2] = (110, 60, 80)
    tensor = preprocess(image, info)
    assert tensor.shape == (1, 3, 3, 4) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[0, :, 1, 2], [50.0, 10.0, 10.0])
    np.testing.assert_allclose(tensor[0, :, 0, 0], [-5.0, -5.0, -6.0])


def test_preprocess_bgr_models_get_blue_first():
    info = ModelInfo("m", 8, (2, 2), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channel_order="BGR")
    image = np.full((2, 2, 3), (1, 2, 3), np.uint8)
    assert preprocess(image, info)[0, :, 0, 0].tolist() == [3.0, 2.0, 1.0]


def test_preprocess_resizes_to_the_model_input_size():
    info = ModelInfo("m", 8, (160, 128))
    image = np.full((480, 640, 3), 128, np.uint8)
    tensor = preprocess(image, info)
    assert tensor.shape == (1, 3, 128, 160)
    # A flat image stays flat through bilinear resizing.
    expected = (128 - np.array(info.mean)) / np.array(info.std)
    np.testing.assert_allclose(tensor[0, :, 64, 80], expected, rtol=1e-6)


def test_preprocess_is_deterministic_on_a_real_frame():
    frame = open_demo("calib")[0]
    info = ModelInfo("m", 8, (96, 64))
    assert preprocess(frame.image, info).tobytes() == preprocess(frame.image.copy(), info).tobytes()


def test_preprocess_rejects_a_non_rgb_array():
    with pytest.raises(SegcompileError, match="uint8 HxWx3"):
        preprocess(np.zeros((4, 4), np.uint8), ModelInfo("m", 8, (4, 4)))


def test_resize_mask_uses_nearest_neighbour_and_keeps_ids():
    mask = np.array([[0, 7], [255, 3]], np.uint8)
    bigger = resize_mask(mask, (4, 4))
    np.testing.assert_array_equal(bigger, np.kron(mask, np.ones((2, 2), np.uint8)))
    smaller = resize_mask(open_demo("eval")[0].mask, (40, 32))
    assert smaller.shape == (32, 40) and set(np.unique(smaller)) <= set(range(len(DEMO_CLASSES)))
