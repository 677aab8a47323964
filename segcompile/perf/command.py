"""``segcompile bench`` and ``segcompile tune``: option parsing only."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from segcompile.errors import SegcompileError

MODEL_HELP = "MODEL is a build folder holding float.onnx + int8.qdq.onnx, or a zoo name (exported here)."


def _size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise SegcompileError(f"--size: expected WIDTHxHEIGHT such as 512x512, got {value!r}") from None
    return width, height


def _threads(value: str) -> tuple[int, ...]:
    try:
        threads = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise SegcompileError(f"--threads: expected a list such as 1,2, got {value!r}") from None
    if not threads or min(threads) < 1:
        raise SegcompileError(f"--threads: thread counts must be >= 1, got {value!r}")
    return threads


_model_options = [
    click.argument("model"),
    click.option("--target", default="host", show_default=True, help="Target profile (its x86_64 core)."),
    click.option("--size", default=None, help="Input size WxH when MODEL is a zoo name (default: its own)."),
    click.option("--calib", default="demo:calib", show_default=True, help="Calibration data (zoo MODEL)."),
    click.option("--frames", default=8, show_default=True, help="Calibration frames for a zoo MODEL."),
    click.option("--mcpu", default=None, help="Override the core's -mcpu ('native' = this CPU)."),
    click.option(
        "--tuning-cache",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Tuning databases folder (default $SEGCOMPILE_TUNING_CACHE or ~/.cache/segcompile/tuning).",
    ),
]


def _with_model_options(func):
    for option in reversed(_model_options):
        func = option(func)
    return func


@click.command("bench")
@_with_model_options
@click.option("--threads", default="1,2", show_default=True, help="Thread counts to measure.")
@click.option("--repeats", default=20, show_default=True, help="Timed runs per runner (median reported).")
@click.option("--warmup", default=3, show_default=True, help="Untimed runs per runner first.")
@click.option("--no-float", is_flag=True, help="Skip the TVM/onnxruntime float modules.")
@click.option("--no-tuning", is_flag=True, help="Ignore cached tuning databases.")
@click.option("--no-schedules", is_flag=True, help="No hand-written schedules either (TVM's default code).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench/results"),
    show_default=True,
    help="Results folder: <model>__<profile>.json and README.md (table of every result there).",
)
def bench(
    model,
    target,
    size,
    calib,
    frames,
    mcpu,
    tuning_cache,
    threads,
    repeats,
    warmup,
    no_float,
    no_tuning,
    no_schedules,
    out_dir,
) -> None:
    """Latency of the compiled float and int8 modules against onnxruntime float and int8 (QDQ).

    Runs all four side by side in one process per thread count, interleaved, and reports
    TVM/onnxruntime ratios. MODEL is a build folder holding float.onnx + int8.qdq.onnx, or a zoo name.
    """
    from segcompile.compile.profiles import load_profile
    from segcompile.perf.bench import BenchConfig, run_bench
    from segcompile.perf.prepare import prepare_model
    from segcompile.perf.results import load_results, write_markdown, write_result

    config = BenchConfig(
        threads=_threads(threads),
        warmup=warmup,
        repeats=repeats,
        use_tuning=not no_tuning,
        tuning_root=str(tuning_cache) if tuning_cache else None,
        mcpu=mcpu,
        float_module=not no_float,
        hand_schedules=not no_schedules,
    )
    profile = load_profile(target)
    with tempfile.TemporaryDirectory(prefix="segcompile-bench-") as work:
        prepared = prepare_model(model, work, _size(size), calib, frames)
        result = run_bench(
            prepared.float_onnx,
            prepared.qdq_onnx,
            profile,
            config,
            model_name=prepared.name,
            stage_seconds=prepared.stage_seconds,
            calibration=prepared.calibration,
        )
    path = write_result(result, out_dir)
    write_markdown(load_results(out_dir), out_dir / "README.md")
    for run in result["runs"]:
        ratios = ", ".join(f"{k} {v}" for k, v in run["ratios"].items())
        click.echo(f"{run['threads']} thread(s): {ratios}")
    click.echo(f"wrote {path}")


@click.command("tune")
@_with_model_options
@click.option("--budget", default=300.0, show_default=True, help="Seconds to spend (checked per kernel).")
@click.option("--trials", default=32, show_default=True, help="MetaSchedule trials per kernel.")
@click.option("--max-kernels", type=int, default=None, help="At most this many kernels (heaviest first).")
@click.option(
    "--precision",
    type=click.Choice(["int8", "float", "both"]),
    default="int8",
    show_default=True,
    help="Which module to tune.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the schedule search.")
def tune(
    model, target, size, calib, frames, mcpu, tuning_cache, budget, trials, max_kernels, precision, seed
) -> None:
    """Tune the compiled module's kernels with MetaSchedule into the cached database later builds use.

    The database is keyed by (profile, model bytes, input shape, target); running again continues where
    the last run stopped. MODEL is a build folder holding float.onnx + int8.qdq.onnx, or a zoo name.
    """
    import tvm

    from segcompile.artifacts import sha256_file
    from segcompile.compile import import_qdq, lower_to_integer
    from segcompile.compile.profiles import load_profile
    from segcompile.compile.targets import target_dict
    from segcompile.compile.tuning import TuningKey, check_tuning_available, input_shape_of, tune_module
    from segcompile.perf.bench import bench_core
    from segcompile.perf.prepare import prepare_model

    check_tuning_available()
    profile = load_profile(target)
    core = bench_core(profile, mcpu)
    target_json = target_dict(core)
    with tempfile.TemporaryDirectory(prefix="segcompile-tune-") as work:
        prepared = prepare_model(model, work, _size(size), calib, frames)
        modules = []
        mod, _ = lower_to_integer(import_qdq(prepared.qdq_onnx))
        if precision in ("int8", "both"):
            modules.append(("int8", mod, prepared.qdq_onnx))
        if precision in ("float", "both"):
            import onnx
            from tvm.relax.frontend.onnx import from_onnx

            graph = onnx.load(str(prepared.float_onnx))
            shape = list(input_shape_of(mod))
            float_mod = from_onnx(graph, shape_dict={graph.graph.input[0].name: shape})
            modules.append(("float", float_mod, prepared.float_onnx))
        share = budget / len(modules)
        for label, module, path in modules:
            key = TuningKey(profile.name, sha256_file(path), input_shape_of(module), target_json)
            report = tune_module(
                module,
                tvm.target.Target(target_json),
                key,
                budget_seconds=share,
                trials_per_task=trials,
                max_tasks=max_kernels,
                seed=seed,
                root=tuning_cache,
            )
            click.echo(
                f"{label}: {report.tuned} kernel(s) tuned, {len(report.tasks)} of {report.tasks_total} in "
                f"the database, {report.seconds:.0f} s -> {report.directory}"
            )
            click.echo(json.dumps([t.__dict__ for t in report.tasks[:5]], indent=None)[:2000])
