"""The benchmark harness, the hand-written CPU schedules and the tuning database (issue 6).

Nothing here asserts a speed: the machine is shared and noisy. The tests check what the numbers are made
of (interleaved timing, warm-up excluded, JSON schema), that scheduled and tuned builds compute exactly what
the default build computes, and that a tuning database is keyed, found and applied.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from compile_nets import INPUT_SHAPE, float_model, qdq_model  # noqa: E402

from segcompile.cli import main  # noqa: E402
from segcompile.compile.targets import resolve_mcpu  # noqa: E402
from segcompile.errors import SegcompileError  # noqa: E402
from segcompile.perf.results import check_result, load_results, markdown_table, write_result  # noqa: E402
from segcompile.perf.timing import Turns, time_interleaved  # noqa: E402

TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A build-folder-like directory with the small test head as float.onnx and int8.qdq.onnx."""
    folder = tmp_path_factory.mktemp("tiny_head")
    onnx.save(float_model(with_softmax=False), str(folder / "float.onnx"))
    qdq_model(folder / "int8.qdq.onnx", with_softmax=False)
    return folder


@pytest.fixture(scope="module")
def int8_module(tiny):
    from segcompile.compile import import_qdq, lower_to_integer

    mod, _ = lower_to_integer(import_qdq(tiny / "int8.qdq.onnx"))
    return mod


@pytest.fixture(scope="module")
def bench_result(tiny, tmp_path_factory) -> dict:
    from segcompile.perf.bench import BenchConfig, run_bench

    config = BenchConfig(threads=(1,), warmup=1, repeats=3, use_tuning=False)
    return run_bench(tiny / "float.onnx", tiny / "int8.qdq.onnx", "host", config, model_name="tiny_head")


def _run(executable, data: np.ndarray) -> np.ndarray:
    import tvm
    from tvm import relax

    return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()


def _input(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(INPUT_SHAPE).astype(np.float32)


def test_interleaved_timing_runs_warmup_then_repeats_and_reports_the_median():
    calls = {"a": 0, "b": 0}
    order = []

    def runner(name, size):
        def run(data):
            calls[name] += 1
            order.append(name)
            return np.linalg.svd(np.ones((size, size)) + data.sum())  # real work of different cost

        return run

    stats = time_interleaved({"a": runner("a", 8), "b": runner("b", 64)}, np.zeros(3), warmup=2, repeats=5)
    assert calls == {"a": 7, "b": 7}
    # Interleaved: the runners alternate call by call, they are not timed in two separate blocks.
    assert order == ["a", "b"] * 7
    for s in stats.values():
        assert s.min_ms <= s.median_ms <= s.max_ms
        assert (s.repeats, s.warmup) == (5, 2)


def test_multi_thread_timing_takes_turns_in_blocks_after_settling():
    """Each turn pauses, runs the runner untimed a few times, then times a block of calls."""
    order = []

    def runner(name):
        def run(data):
            order.append(name)

        return run

    turns = Turns(block=2, pause_s=0.001, settle_calls=3)
    stats = time_interleaved(
        {"a": runner("a"), "b": runner("b")}, np.zeros(1), warmup=0, repeats=5, turns=turns
    )
    assert {s.repeats for s in stats.values()} == {5}
    # Three turns each (2 + 2 + 1 timed calls), each opening with 3 settling calls.
    assert order == (["a"] * 5 + ["b"] * 5) * 2 + ["a"] * 4 + ["b"] * 4


def test_timing_keeps_each_runners_previous_result_while_it_computes_the_next():
    """Like an application's frame loop: the last output is still referenced during the next call."""
    import weakref

    class Output:
        pass

    previous: dict[str, weakref.ref] = {}
    alive_during_call: list[bool] = []

    def runner(name):
        def run(_data):
            if name in previous:
                alive_during_call.append(previous[name]() is not None)
            out = Output()
            previous[name] = weakref.ref(out)
            return out

        return run

    time_interleaved({"a": runner("a"), "b": runner("b")}, np.zeros(3), warmup=1, repeats=4)
    assert len(alive_during_call) == 2 * 4 and all(alive_during_call)


def test_timing_rejects_zero_repeats():
    with pytest.raises(SegcompileError, match="repeats"):
        time_interleaved({"a": lambda d: d}, np.zeros(1), warmup=0, repeats=0)


def test_bench_result_follows_the_schema_with_all_four_runners(bench_result):
    check_result(bench_result)
    (run,) = bench_result["runs"]
    assert run["threads"] == 1 and run["tvm_threads"] == 1
    assert set(run["latency"]) == {"ort_float", "ort_int8", "tvm_float", "tvm_int8"}
    for label, ratio in run["ratios"].items():
        ours, theirs = (run["latency"][name]["median_ms"] for name in label.split("/"))
        assert ratio == pytest.approx(ours / theirs, rel=1e-2)
    assert set(bench_result["goal"]) == {"tvm_float_no_slower", "tvm_int8_no_slower"}
    assert {"integer_lowering", "tvm_build_int8", "tvm_build_float"} <= set(bench_result["compile_seconds"])
    assert bench_result["input_shape"] == list(INPUT_SHAPE)


def test_bench_compares_outputs_of_the_same_input(bench_result):
    agreement = bench_result["runs"][0]["agreement"]
    # The float module is the same float graph: onnxruntime and TVM agree to rounding.
    assert agreement["tvm_float"]["max_abs_diff"] < 1e-4
    # The integer module matches onnxruntime's QDQ int8 within a few output LSBs.
    assert agreement["tvm_int8"]["argmax_agreement"] > 0.9


def test_tvm_runner_returns_outputs_that_later_calls_leave_alone(tiny, tmp_path):
    """The runner hands out the VM's output without copying it (as onnxruntime does): each call's array
    must stay what that call computed."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from segcompile.perf.runners import TvmRunner

    model = onnx.load(str(tiny / "float.onnx"))
    mod = from_onnx(model, shape_dict={model.graph.input[0].name: list(INPUT_SHAPE)})
    tvm.compile(mod, target=tvm.target.Target(TARGET)).export_library(str(tmp_path / "float.so"))
    runner = TvmRunner(tmp_path / "float.so")
    first = runner(_input(1))
    kept = first.copy()
    second = runner(_input(2))
    assert np.array_equal(first, kept)
    assert not np.array_equal(first, second)
    assert np.array_equal(runner(_input(1)), kept)


def test_result_written_and_read_back_into_a_markdown_table(bench_result, tmp_path):
    path = write_result(bench_result, tmp_path)
    assert path.name == "tiny_head__host.json"
    (tmp_path / "other.json").write_text('{"not": "a bench result"}')
    results = load_results(tmp_path)
    assert [r["model"] for r in results] == ["tiny_head"]
    table = markdown_table(results)
    ratio = bench_result["runs"][0]["ratios"]["tvm_int8/ort_int8"]
    cpu = resolve_mcpu("native")  # the host profile builds for this machine's CPU, named in the table
    assert f"| tiny_head | 12x8 | host ({cpu}) | 1 | {ratio:.3g}x |" in table


def test_check_result_names_the_missing_field(bench_result):
    broken = json.loads(json.dumps(bench_result))
    del broken["runs"][0]["latency"]["tvm_int8"]["median_ms"]
    with pytest.raises(SegcompileError, match=r"runs\[0\]\.latency\.tvm_int8: missing number median_ms"):
        check_result(broken, "r.json")


def test_hand_schedules_give_bit_identical_integer_outputs(int8_module):
    import tvm

    from segcompile.compile.tuning import compile_tuned

    target = tvm.target.Target(TARGET)
    default = compile_tuned(int8_module, target, database=None, hand_schedules=False)
    scheduled = compile_tuned(int8_module, target, database=None, hand_schedules=True)
    for seed in range(3):
        data = _input(seed) * 3
        assert np.array_equal(_run(default, data), _run(scheduled, data))


def test_hand_schedule_inlines_the_requantize_chain_and_vectorizes_the_conv(int8_module):
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from segcompile.compile.cpu_schedules import SCHEDULED_ATTR, schedule_kernel
    from segcompile.compile.tuning import legalize

    target = tvm.target.Target(TARGET)
    tasks = ms.relax_integration.extract_tasks(legalize(int8_module, target), target)
    conv = next(t for t in tasks if t.task_name.startswith("fused_conv2d") and "right_shift" in t.task_name)
    before = conv.dispatched[0]["main"]
    after = schedule_kernel(before)
    assert after.attrs[SCHEDULED_ATTR]
    text_before, text_after = before.script(), after.script()
    # The int64 requantize steps no longer write buffers of their own.
    assert text_before.count("T.sblock_alloc_buffer") > text_after.count("T.sblock_alloc_buffer")
    assert "T.parallel" in text_after and "T.vectorized" in text_after


def test_database_schedules_are_applied_and_keep_outputs_identical(int8_module):
    import tvm
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from segcompile.compile.tuning import compile_tuned, legalize, tuned_pipeline

    target = tvm.target.Target(TARGET)
    task = ms.relax_integration.extract_tasks(legalize(int8_module, target), target)[0]
    workload = task.dispatched[0]
    # A real schedule for one kernel, recorded as MetaSchedule would record a tuned one.
    sch = s_tir.Schedule(workload)
    block = next(b for b in sch.get_child_blocks(sch.get_sblock("root")) if "conv2d" in sch.get(b).name_hint)
    sch.parallel(sch.get_loops(block)[1])
    database = ms.database.MemoryDatabase()
    entry = database.commit_workload(workload)
    args = ms.arg_info.ArgInfo.from_prim_func(workload["main"])
    database.commit_tuning_record(ms.database.TuningRecord(sch.trace, entry, [1e-5], target, args))

    lowered = tuned_pipeline(target, database, hand_schedules=False)(int8_module)
    scheduled = [
        gv.name_hint
        for gv, f in lowered.functions.items()
        if isinstance(f, tvm.tirx.PrimFunc) and "T.parallel" in f.script()
    ]
    assert scheduled == [task.task_name]
    tuned = compile_tuned(int8_module, target, database, hand_schedules=False)
    untuned = compile_tuned(int8_module, target, None, hand_schedules=False)
    assert np.array_equal(_run(tuned, _input()), _run(untuned, _input()))


def test_tuning_key_folder_is_stable_and_separates_targets():
    from segcompile.compile.tuning import TuningKey, database_dir, find_database

    key = TuningKey("host", "ab" * 32, (1, 3, 8, 12), TARGET)
    same = TuningKey("host", "ab" * 32, (1, 3, 8, 12), dict(TARGET))
    other = TuningKey("host", "ab" * 32, (1, 3, 8, 12), {**TARGET, "mcpu": "znver4"})
    assert database_dir(key, "/c") == database_dir(same, "/c")
    assert database_dir(key, "/c") != database_dir(other, "/c")
    assert database_dir(key, "/c").name.startswith("host-abababababab-1x3x8x12-")
    assert find_database(key, "/nonexistent/cache") is None


def test_a_database_folder_of_another_key_is_refused(tmp_path):
    from segcompile.compile.tuning import (
        KEY_FILE,
        RECORD_FILE,
        WORKLOAD_FILE,
        TuningKey,
        database_dir,
        find_database,
    )

    key = TuningKey("host", "cd" * 32, (1, 3, 8, 12), TARGET)
    folder = database_dir(key, tmp_path)
    folder.mkdir(parents=True)
    (folder / WORKLOAD_FILE).write_text("[]\n")
    (folder / RECORD_FILE).write_text("[]\n")
    (folder / KEY_FILE).write_text(json.dumps({"profile": "tda4vm"}))
    with pytest.raises(SegcompileError, match="belongs to another key"):
        find_database(key, tmp_path)


def _tuning_available() -> bool:
    from segcompile.compile.tuning import check_tuning_available

    try:
        check_tuning_available()
    except SegcompileError:
        return False
    return True


def test_tune_command_names_a_missing_tuning_module_and_how_to_install_it(tiny, tmp_path, monkeypatch):
    from segcompile.compile import tuning

    # A module no environment has stands for one the tune extra would install.
    monkeypatch.setattr(tuning, "TUNING_PACKAGES", (*tuning.TUNING_PACKAGES, "segcompile_no_such_module"))
    result = CliRunner().invoke(main, ["tune", str(tiny), "--tuning-cache", str(tmp_path)])
    assert result.exit_code != 0
    assert "missing packages segcompile_no_such_module" in result.output
    assert "apache-tvm-ffi==0.1.14.post0" in result.output and ".[tune]" in result.output
    assert not any(tmp_path.iterdir())  # nothing tuned, no half-made database


@pytest.mark.slow
@pytest.mark.skipif(not _tuning_available(), reason="needs apache-tvm-ffi==0.1.14.post0 and the tune extra")
def test_tuned_database_is_cached_found_and_reused(int8_module, tiny, tmp_path):
    """`segcompile tune` tunes the heaviest kernel into the cache; a second run finds it there; a build
    with the database computes exactly what the default build computes."""
    import tvm

    from segcompile.compile.tuning import KEY_FILE, compile_tuned, open_database

    command = ["tune", str(tiny), "--tuning-cache", str(tmp_path), "--mcpu", "x86-64"]
    command += ["--budget", "600", "--trials", "2", "--max-kernels", "1"]
    first = CliRunner().invoke(main, command)
    assert first.exit_code == 0, first.output
    assert "int8: 1 kernel(s) tuned" in first.output
    second = CliRunner().invoke(main, command)
    assert second.exit_code == 0, second.output
    assert "int8: 0 kernel(s) tuned" in second.output  # found in the database, not tuned again
    (folder,) = [p for p in tmp_path.iterdir() if (p / KEY_FILE).is_file()]
    target = tvm.target.Target(json.loads((folder / KEY_FILE).read_text())["target"])
    tuned = compile_tuned(int8_module, target, open_database(folder))
    untuned = compile_tuned(int8_module, target, None, hand_schedules=False)
    assert np.array_equal(_run(tuned, _input()), _run(untuned, _input()))


def test_bench_command_writes_json_and_markdown(tiny, tmp_path):
    out = tmp_path / "results"
    args = [
        "bench",
        str(tiny),
        "--threads",
        "1",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--no-float",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "tiny_head__host.json").read_text())
    assert set(data["runs"][0]["latency"]) == {"ort_int8", "tvm_int8"}
    assert "| tiny_head |" in (out / "README.md").read_text()


def test_bench_refuses_a_profile_without_a_core_that_runs_here(tiny):
    result = CliRunner().invoke(main, ["bench", str(tiny), "--target", "tda4vm"])
    assert result.exit_code != 0
    assert "--target tda4vm: no x86_64 core" in result.output


def test_bench_names_a_folder_without_the_onnx_files(tmp_path):
    result = CliRunner().invoke(main, ["bench", str(tmp_path)])
    assert result.exit_code != 0
    assert "no float.onnx" in result.output
