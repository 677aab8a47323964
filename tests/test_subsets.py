"""Seeded, disjoint frame selections and the list files that pin them for reuse."""

from __future__ import annotations

import pytest

from segcompile.data.demo import open_demo
from segcompile.data.spec import open_dataset
from segcompile.data.subsets import pinned_spec, read_subset_list, select_subset, write_subset_list
from segcompile.errors import SegcompileError


@pytest.fixture(scope="module")
def calib_split():
    return open_demo("calib")  # 48 real rendered frames


def test_the_same_seed_picks_the_same_frames(calib_split):
    first = select_subset(calib_split, 10, seed=3)
    again = select_subset(open_demo("calib"), 10, seed=3)
    assert first.names == again.names and len(set(first.names)) == 10
    assert first[4].image.tobytes() == calib_split[calib_split.names.index(first.names[4])].image.tobytes()


def test_another_seed_picks_other_frames(calib_split):
    assert select_subset(calib_split, 10, seed=0).names != select_subset(calib_split, 10, seed=1).names


def test_a_smaller_subset_is_the_start_of_a_larger_one(calib_split):
    assert select_subset(calib_split, 5, seed=7).names == select_subset(calib_split, 20, seed=7).names[:5]


def test_calibration_and_evaluation_subsets_of_one_split_are_disjoint(calib_split):
    calibration = select_subset(calib_split, 16, seed=0)
    evaluation = select_subset(calib_split, 32, seed=0, exclude=calibration.names)
    assert not set(calibration.names) & set(evaluation.names)
    assert len(evaluation) == 32 and evaluation.class_names == calib_split.class_names


def test_asking_for_more_frames_than_remain_is_an_error(calib_split):
    with pytest.raises(SegcompileError, match="asked for 40 frames but only 38 are available"):
        select_subset(calib_split, 40, seed=0, exclude=calib_split.names[:10])


def test_a_written_list_reopens_exactly_those_frames_in_order(tmp_path, calib_split):
    chosen = select_subset(calib_split, 6, seed=5)
    path = write_subset_list(tmp_path / "calibration" / "demo-6.txt", chosen.names, "demo:calib", seed=5)
    reopened = open_dataset(f"subset:{path}")
    assert reopened.names == chosen.names
    assert reopened[2].mask.tobytes() == chosen[2].mask.tobytes()
    assert read_subset_list(path) == ("demo:calib", chosen.names)
    assert "# seed: 5" in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["demo-6.txt"]  # no temporary file left behind


def test_writing_the_same_selection_twice_gives_identical_bytes(tmp_path, calib_split):
    names = select_subset(calib_split, 8, seed=2).names
    one = write_subset_list(tmp_path / "a.txt", names, "demo:calib", seed=2).read_bytes()
    two = write_subset_list(tmp_path / "b.txt", select_subset(open_demo("calib"), 8, seed=2).names,
                            "demo:calib", seed=2).read_bytes()
    assert one == two


def test_a_list_naming_an_unknown_frame_is_an_error_naming_list_and_frame(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("# segcompile subset\n# dataset: demo:calib\nno_such_frame\n")
    with pytest.raises(SegcompileError, match=r"calib\.txt.*'no_such_frame'"):
        open_dataset(f"subset:{path}")


def test_a_list_without_its_dataset_line_is_rejected(tmp_path):
    path = tmp_path / "bare.txt"
    path.write_text("frame_a\nframe_b\n")
    with pytest.raises(SegcompileError, match=r"bare\.txt.*# dataset: SPEC"):
        open_dataset(f"subset:{path}")


def test_a_missing_list_file_is_named(tmp_path):
    with pytest.raises(SegcompileError, match=r"nowhere\.txt: subset list not found"):
        open_dataset(f"subset:{tmp_path / 'nowhere.txt'}")


def test_empty_or_duplicate_selections_are_not_written(tmp_path):
    with pytest.raises(SegcompileError, match="empty"):
        write_subset_list(tmp_path / "x.txt", [], "demo:calib")
    with pytest.raises(SegcompileError, match="twice"):
        write_subset_list(tmp_path / "x.txt", ["a", "a"], "demo:calib")
    assert not (tmp_path / "x.txt").exists()


def test_a_subset_of_a_standard_layout_keeps_the_role_rule(tmp_path):
    from PIL import Image

    for split, count in (("train", 4), ("val", 2)):
        for index in range(count):
            name = f"ADE_{split}_{index:08d}"
            folder = "training" if split == "train" else "validation"
            for kind, mode, suffix in (("images", "RGB", "jpg"), ("annotations", "L", "png")):
                path = tmp_path / kind / folder / f"{name}.{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new(mode, (4, 4)).save(path)
    calib = open_dataset(f"ade20k32:{tmp_path}", role="calib")
    assert pinned_spec(calib) == f"ade20k32:{tmp_path}:train"
    path = write_subset_list(tmp_path / "calib.txt", calib.names[:2], pinned_spec(calib))
    pinned = open_dataset(f"subset:{path}", role="calib")
    assert pinned.names == calib.names[:2]
    assert not set(pinned.names) & set(open_dataset(f"ade20k32:{tmp_path}", role="eval").names)


def test_the_subset_command_writes_disjoint_reusable_calibration_and_evaluation_lists(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from segcompile.cli import main

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    calib = runner.invoke(main, ["subset", "demo:calib", "--frames", "12", "--seed", "4"])
    assert calib.exit_code == 0, calib.output
    calib_list = tmp_path / "calibration" / "demo-calib-12-seed4.txt"
    assert f"subset:{calib_list.relative_to(tmp_path)}" in calib.output
    evaluation = runner.invoke(main, ["subset", "demo:calib", "--frames", "30", "--role", "eval",
                                      "--exclude", str(calib_list), "--out", "calibration/eval.txt"])
    assert evaluation.exit_code == 0, evaluation.output
    calib_set = open_dataset(f"subset:{calib_list}", role="calib")
    eval_set = open_dataset("subset:calibration/eval.txt", role="eval")
    assert len(calib_set) == 12 and len(eval_set) == 30
    assert not set(calib_set.names) & set(eval_set.names)


def test_the_subset_command_pins_the_split_a_role_chose(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from segcompile.cli import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["subset", "demo", "--frames", "3", "--out", "c.txt"])
    assert result.exit_code == 0, result.output
    assert read_subset_list(tmp_path / "c.txt")[0] == "demo:calib"
    # reopened for evaluation it still means those calibration frames, not demo:eval
    assert set(open_dataset("subset:c.txt", role="eval").names) <= set(open_demo("calib").names)


def test_the_subset_command_reports_too_few_frames_as_one_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from segcompile.cli import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["subset", "demo:calib", "--frames", "49"])
    assert result.exit_code == 1
    assert "error: demo:calib: asked for 49 frames but only 48 are available" in result.output
    assert not (tmp_path / "calibration").exists()
