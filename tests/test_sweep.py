"""`segcompile sweep`: sweep.yaml checks, sharded evaluation, and a small sweep through a local Ray."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from click.testing import CliRunner
from verify_builds import CALIB_NAMES, make_build, write_scenes

from segcompile.cli import main
from segcompile.data.spec import open_dataset
from segcompile.errors import SegcompileError
from segcompile.sweep.config import load_sweep, parse_sweep
from segcompile.sweep.engine import import_ray, run_sweep
from segcompile.sweep.jobs import expand_jobs, finished_state, shard_ranges
from segcompile.verify.evaluate import select_frames
from segcompile.verify.stage import VerifyConfig, report_from_scores, run_verify, score_frames

DEMO = "demo_mobilenetv2s16_deeplabv3lite_160x128"
UNET = "cityscapes_mobilenetv2_unetlite_768x384"
DEMO_DATA = Path(__file__).resolve().parents[1] / "calibration" / "demo"


def minimal(**overrides) -> dict:
    content = {
        "models": [DEMO],
        "targets": ["host"],
        "calib": {"data": "demo:calib", "frames": 4},
        "eval": {"data": "demo:eval", "frames": 6},
    }
    content.update(overrides)
    return content


def error_of(content, source: str = "s.yaml") -> str:
    with pytest.raises(SegcompileError) as caught:
        parse_sweep(content, source)
    return str(caught.value)


# --- sweep.yaml -------------------------------------------------------------------------------------


def test_a_minimal_file_gets_the_documented_defaults():
    config = parse_sweep(minimal(), "s.yaml")
    assert [m.label for m in config.models] == [DEMO]
    assert [(m.method, m.label, m.bias_correction) for m in config.methods] == [("minmax", "minmax", True)]
    assert config.eval.shard_size == 32 and config.seed == 0 and config.out is None
    assert config.targets[0].label == "host"


def test_model_size_and_method_options_make_distinct_row_names():
    config = parse_sweep(
        minimal(
            models=[{"name": DEMO, "input_size": "64x48"}, {"name": DEMO, "input_size": [96, 64]}],
            methods=["minmax", {"method": "percentile", "scheme": "tda4vm", "bias_correction": False}],
        )
    )
    assert [m.label for m in config.models] == [f"{DEMO}@64x48", f"{DEMO}@96x64"]
    assert [m.input_size for m in config.models] == [(64, 48), (96, 64)]
    assert [m.label for m in config.methods] == ["minmax", "percentile+tda4vm-nobc"]


def test_an_unknown_top_level_key_is_named_with_the_file():
    assert error_of(minimal(target=["host"])).startswith("s.yaml: target: unknown key")


def test_a_missing_required_section_is_named():
    content = minimal()
    del content["eval"]
    assert error_of(content) == "s.yaml: eval: missing (required)"


def test_an_unknown_zoo_model_names_the_list_entry_and_suggests_names():
    message = error_of(minimal(models=[DEMO, "demo_mobilenetv2s16_deeplabv3lite_160x12"]))
    assert message.startswith("s.yaml: models[1].name: unknown zoo model")
    assert DEMO in message


def test_a_malformed_input_size_is_named():
    message = error_of(minimal(models=[{"name": DEMO, "input_size": "64 by 48"}]))
    assert message.startswith("s.yaml: models[0].input_size: expected WIDTHxHEIGHT")


def test_an_unknown_key_inside_a_model_is_named():
    assert error_of(minimal(models=[{"name": DEMO, "size": "64x48"}])).startswith("s.yaml: models[0].size:")


def test_an_unknown_target_is_named():
    assert error_of(minimal(targets=["host", "no_such_board"])).startswith("s.yaml: targets[1]:")


def test_an_unknown_calibration_method_is_named():
    message = error_of(minimal(methods=["minmax", "median"]))
    assert message.startswith("s.yaml: methods[1].method: 'median' is not one of")


def test_an_unknown_scheme_is_named():
    message = error_of(minimal(methods=[{"method": "minmax", "scheme": "int4"}]))
    assert message.startswith("s.yaml: methods[0].scheme: 'int4'")


def test_frame_counts_must_be_positive_integers():
    assert error_of(minimal(eval={"data": "demo:eval", "frames": 0})) == (
        "s.yaml: eval.frames: must be at least 1, got 0"
    )
    assert error_of(minimal(calib={"data": "demo:calib", "frames": True})) == (
        "s.yaml: calib.frames: expected an integer, got True"
    )


def test_the_shard_size_is_checked():
    message = error_of(minimal(eval={"data": "demo:eval", "shard_size": "big"}))
    assert message == "s.yaml: eval.shard_size: expected an integer, got 'big'"


def test_two_rows_with_the_same_name_are_refused():
    message = error_of(minimal(targets=["host", "host"]))
    assert message.startswith("s.yaml: targets[1]: same row name 'host' as targets[0]")


def test_a_missing_checkpoint_is_named(tmp_path):
    message = error_of(minimal(models=[{"name": DEMO, "checkpoint": str(tmp_path / "w.pt")}]))
    assert message.startswith("s.yaml: models[0].checkpoint:") and "no such file" in message


def test_a_file_that_is_not_yaml_is_named(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("models: [demo\ntargets: host\n")
    with pytest.raises(SegcompileError, match=r"broken.yaml: not readable as YAML"):
        load_sweep(path)


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- demo\n- host\n")
    with pytest.raises(SegcompileError, match=r"list.yaml: expected a mapping"):
        load_sweep(path)


def test_evaluation_data_made_of_calibration_frames_is_refused_before_any_work(tmp_path):
    every_frame = {"data": "demo:calib", "frames": 1000}
    config = parse_sweep(minimal(calib=every_frame, eval={"data": "demo:calib"}), "s.yaml")
    with pytest.raises(SegcompileError, match=r"s.yaml: eval.data: demo:calib: no evaluation frames left"):
        expand_jobs(config, tmp_path)


def test_a_sweep_needs_an_output_folder():
    with pytest.raises(SegcompileError, match=r"s.yaml: out: no output folder"):
        run_sweep(parse_sweep(minimal(), "s.yaml"))


# --- jobs -------------------------------------------------------------------------------------------


def test_jobs_are_models_x_targets_x_methods_in_file_order(tmp_path):
    config = parse_sweep(minimal(targets=["host", "aarch64"], methods=["minmax", "percentile"]))
    jobs = expand_jobs(config, tmp_path)
    assert [(j.target.label, j.method.label) for j in jobs] == [
        ("host", "minmax"),
        ("host", "percentile"),
        ("aarch64", "minmax"),
        ("aarch64", "percentile"),
    ]
    assert jobs[2].folder == tmp_path / "builds" / DEMO / "aarch64" / "minmax"
    assert len({j.input_hash for j in jobs}) == 4


def test_the_input_hash_ignores_the_shard_size_but_follows_the_frames(tmp_path):
    def first_hash(**overrides) -> str:
        return expand_jobs(parse_sweep(minimal(**overrides)), tmp_path)[0].input_hash

    reference = first_hash()
    assert first_hash(eval={"data": "demo:eval", "frames": 6, "shard_size": 2}) == reference
    assert first_hash(eval={"data": "demo:eval", "frames": 5}) != reference
    assert first_hash(calib={"data": "demo:calib", "frames": 3}) != reference
    assert first_hash(seed=1) != reference


def test_evaluation_leaves_out_the_frames_calibration_used(tmp_path):
    job = expand_jobs(parse_sweep(minimal(eval={"data": "demo:calib", "frames": 6})), tmp_path)[0]
    evaluation = open_dataset("demo:calib", role="eval")
    names = [evaluation.names[i] for i in job.eval_indices]
    assert list(job.calib_names) == [f"calib_{i:04d}" for i in range(4)]
    assert names == [f"calib_{i:04d}" for i in range(4, 10)]
    assert list(job.eval_dropped) == list(job.calib_names)


def test_shards_cover_every_frame_once():
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_ranges(3, 5) == [(0, 3)]


# --- Ray is optional --------------------------------------------------------------------------------


def test_a_missing_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail as if it were not installed
    with pytest.raises(SegcompileError, match=r"pip install 'segcompile\[distributed\]'"):
        import_ray()


def test_workers_are_refused_for_a_cluster_address():
    from segcompile.sweep.engine import start_ray

    ray = import_ray()
    with pytest.raises(SegcompileError, match=r"--workers: only for a local Ray"):
        start_ray(ray, "auto", 2)
    assert not ray.is_initialized()


def test_an_address_without_a_cluster_is_a_clear_error():
    from segcompile.sweep.engine import start_ray

    with pytest.raises(SegcompileError, match=r"--address auto: cannot connect to Ray"):
        start_ray(import_ray(), "auto", None)


def test_other_commands_do_not_import_ray():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from segcompile.cli import main\n"
        "assert CliRunner().invoke(main, ['targets', 'list']).exit_code == 0\n"
        "assert CliRunner().invoke(main, ['sweep', '--help']).exit_code == 0\n"
        "print('ray' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# --- sharded evaluation -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def colour_build(tmp_path_factory) -> tuple[Path, str]:
    """A compiled build of the colour classifier and 12 held-out scenes (2 of them calibration frames)."""
    root = tmp_path_factory.mktemp("shards")
    build = make_build(root / "build", compiled=True)
    data = write_scenes(root / "eval", "s", range(0, 10))
    write_scenes(data, "s", range(100, 102))
    return build, f"folder:{data / 'images'}:{data / 'masks'}"


@pytest.mark.parametrize("shard_size", [1, 3, 7])
def test_summed_shards_give_exactly_the_single_process_report(colour_build, tmp_path, shard_size):
    build, spec = colour_build
    single, sharded = (Path(shutil.copytree(build, tmp_path / name)) for name in ("single", "sharded"))
    dataset = open_dataset(spec, role="eval")
    config = VerifyConfig()
    expected = run_verify(config, single, dataset, CALIB_NAMES).report

    indices, dropped = select_frames(list(dataset.names), CALIB_NAMES, None, False)
    parts = [
        score_frames(config, sharded, dataset, indices, a, b)
        for a, b in shard_ranges(len(indices), shard_size)
    ]
    result = report_from_scores(config, sharded, dataset, indices, parts, CALIB_NAMES, dropped)

    got = json.loads((sharded / "report.json").read_text())
    for precision in ("float", "int8"):
        assert np.array_equal(
            np.array(got["confusion"][precision]), np.array(expected["confusion"][precision])
        )
    assert (result.float_miou, result.int8_miou) == (expected["float_miou"], expected["int8_miou"])
    assert {k: v for k, v in got.items() if k != "timings"} == {
        k: v for k, v in expected.items() if k != "timings"
    }
    assert got["frames_excluded_overlap"] == ["s100", "s101"]
    for sample in (single / "verify_samples").iterdir():
        assert (sharded / "verify_samples" / sample.name).read_bytes() == sample.read_bytes()


def test_shards_that_leave_a_gap_are_refused(colour_build, tmp_path):
    build, spec = colour_build
    folder = Path(shutil.copytree(build, tmp_path / "gap"))
    dataset = open_dataset(spec, role="eval")
    indices, _ = select_frames(list(dataset.names), CALIB_NAMES, None, False)
    parts = [
        score_frames(VerifyConfig(), folder, dataset, indices, a, b) for a, b in ((0, 3), (4, len(indices)))
    ]
    with pytest.raises(ValueError, match="must cover"):
        report_from_scores(VerifyConfig(), folder, dataset, indices, parts, CALIB_NAMES)


# --- a small sweep through a local Ray --------------------------------------------------------------

CALIB_FRAMES, EVAL_FRAMES = 4, 6
MODELS = {DEMO: (64, 48), UNET: (64, 32)}
TARGETS = ("host", "aarch64")


def _label(name: str) -> str:
    width, height = MODELS[name]
    return f"{name}@{width}x{height}"


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
    """Two zoo models x two targets, minmax, 4 calibration and 6 evaluation frames, run through Ray.

    The demo model is evaluated on demo:eval; the Cityscapes model (19 classes, random weights) on the
    same frames copied into a folder without class names, so the demo masks (ids 0..7) are valid labels.
    """
    root = tmp_path_factory.mktemp("sweep")
    unlabelled = root / "frames"
    for kind, suffix in (("images", ".jpg"), ("masks", ".png")):
        (unlabelled / kind).mkdir(parents=True)
        for index in range(EVAL_FRAMES):
            shutil.copy(DEMO_DATA / kind / f"eval_{index:04d}{suffix}", unlabelled / kind)
    unet_eval = f"folder:{unlabelled / 'images'}:{unlabelled / 'masks'}"
    content = {
        "models": [
            {"name": DEMO, "input_size": "64x48"},
            {"name": UNET, "input_size": "64x32", "eval": unet_eval},
        ],
        "targets": list(TARGETS),
        "methods": ["minmax"],
        "calib": {"data": "demo:calib", "frames": CALIB_FRAMES},
        "eval": {"data": "demo:eval", "frames": EVAL_FRAMES, "shard_size": 4},
        "out": str(root / "out"),
    }
    (root / "sweep.yaml").write_text(yaml.safe_dump(content))
    first = CliRunner().invoke(main, ["sweep", str(root / "sweep.yaml"), "--workers", "2"])
    yield root, first, {DEMO: "demo:eval", UNET: unet_eval}
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "out" / "sweep.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_the_sweep_builds_every_row_through_ray(sweep_root):
    root, first, _ = sweep_root
    assert first.exit_code == 0, first.output
    rows = _rows(root)
    assert [(r["model"], r["target"], r["method"], r["status"]) for r in rows] == [
        (_label(m), t, "minmax", "built") for m in MODELS for t in TARGETS
    ]
    for row in rows:
        folder = root / "out" / row["folder"]
        assert (folder / "manifest.json").is_file() and (folder / "report.html").is_file()
        assert float(row["latency_ratio"]) > 0 and float(row["compile_seconds"]) > 0
        assert int(row["eval_frames"]) == EVAL_FRAMES and int(row["calib_frames"]) == CALIB_FRAMES
    page = (root / "out" / "sweep.html").read_text()
    assert "<table>" in page and "http://" not in page and "https://" not in page
    ray = sys.modules["ray"]
    assert not ray.is_initialized(), "the sweep shuts down the Ray it started"


@pytest.mark.slow
@pytest.mark.parametrize(("model", "target"), [(DEMO, "host"), (UNET, "aarch64")])
def test_the_table_matches_a_sequential_build(sweep_root, tmp_path, model, target):
    """Each model and each target once (a sequential build of all four rows would double the test time)."""
    from segcompile.pipeline import BuildConfig, run_build
    from segcompile.verify.qdq_layers import QdqGraph

    root, first, eval_specs = sweep_root
    assert first.exit_code == 0, first.output
    row = next(r for r in _rows(root) if r["model"] == _label(model) and r["target"] == target)
    out = tmp_path / "sequential"
    run_build(
        BuildConfig(
            model=model,
            target=target,
            calib="demo:calib",
            eval=eval_specs[model],
            out=out,
            input_size=MODELS[model],
            calib_frames=CALIB_FRAMES,
            eval_frames=EVAL_FRAMES,
        ),
        echo=lambda _line: None,
    )
    report = json.loads((out / "report.json").read_text())
    compiled = json.loads((out / "compile.json").read_text())
    assert float(row["float_miou"]) == report["float_miou"]
    assert float(row["int8_miou"]) == report["int8_miou"]
    assert float(row["miou_drop"]) == report["miou_drop"]
    shipped = [p for core in compiled["cores"] for p in (out / core["name"]).rglob("*") if p.is_file()]
    assert int(row["artifact_bytes"]) == sum(p.stat().st_size for p in shipped)
    macs = QdqGraph(onnx.load(str(out / "int8.qdq.onnx"))).total_macs
    assert float(row["gmacs"]) == round(macs / 1e9, 4)
    swept = json.loads((root / "out" / row["folder"] / "report.json").read_text())
    assert swept["confusion"] == report["confusion"]
    assert swept["frames_eval"] == report["frames_eval"]


@pytest.mark.slow
def test_a_second_run_reuses_every_finished_folder(sweep_root):
    root, first, _ = sweep_root
    assert first.exit_code == 0, first.output
    before = _rows(root)
    manifests = sorted((root / "out" / "builds").rglob("manifest.json"))
    stamps = [p.stat().st_mtime_ns for p in manifests]
    second = CliRunner().invoke(main, ["sweep", str(root / "sweep.yaml"), "--workers", "2"])
    assert second.exit_code == 0, second.output
    assert second.output.count("reused  ") == 4 and "queued" not in second.output
    after = _rows(root)
    assert [r["status"] for r in after] == ["reused"] * 4
    keep = ("float_miou", "int8_miou", "miou_drop", "gmacs", "artifact_bytes", "latency_ratio")
    assert [[r[k] for k in keep] for r in after] == [[r[k] for k in keep] for r in before]
    assert [p.stat().st_mtime_ns for p in manifests] == stamps
    assert "Reused rows:" in (root / "out" / "sweep.md").read_text()


@pytest.mark.slow
def test_a_tampered_or_changed_folder_is_not_taken_as_finished(sweep_root, tmp_path):
    root, first, _ = sweep_root
    assert first.exit_code == 0, first.output
    config = load_sweep(root / "sweep.yaml")
    job = expand_jobs(config, root / "out")[0]
    assert finished_state(job) == (True, "finished with the same inputs")
    copy = tmp_path / "out"
    shutil.copytree(root / "out", copy)
    moved = expand_jobs(config, copy)[0]
    (moved.folder / "quant_params.json").write_text("{}")
    done, reason = finished_state(moved)
    assert not done and "quant_params.json: sha256 differs" in reason
    changed = expand_jobs(
        parse_sweep({**yaml.safe_load((root / "sweep.yaml").read_text()), "seed": 1}), copy
    )[1]
    assert finished_state(changed) == (False, "inputs changed since it was built")


@pytest.mark.slow
def test_a_failed_build_is_named_in_the_table_and_the_exit_code(tmp_path):
    import torch

    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    content = minimal(
        models=[{"name": DEMO, "input_size": "64x48", "checkpoint": str(tmp_path / "other.pt")}]
    )
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({**content, "out": str(tmp_path / "out")}))
    result = CliRunner().invoke(main, ["sweep", str(tmp_path / "sweep.yaml"), "--workers", "1"])
    assert result.exit_code == 1
    assert "error: 1 of 1 builds failed" in result.output
    (row,) = _rows(tmp_path)
    assert row["status"] == "failed" and f"{tmp_path / 'other.pt'}: does not fit {DEMO}" in row["error"]
    assert "failed: " in (tmp_path / "out" / "logs" / f"{DEMO}@64x48__host__minmax.log").read_text()
    assert not (tmp_path / "out" / row["folder"] / "manifest.json").exists()


def test_the_example_sweep_file_is_valid():
    example = Path(__file__).resolve().parents[1] / "examples" / "sweep-demo.yaml"
    assert len(expand_jobs(load_sweep(example), Path("unused"))) == 9
