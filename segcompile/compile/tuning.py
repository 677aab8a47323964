"""MetaSchedule tuning databases: one per (profile, model, input shape, target), cached and reused by builds.

Untuned TVM CPU code runs the default (naive) loop nests; MetaSchedule searches schedules for each fused
kernel of the program, measures them on this machine and keeps the best ones in a JSON database. A later
build of the *same* program for the *same* target applies the database (``MetaScheduleApplyDatabase``) and
falls back to the default schedule for kernels the database does not hold, so a partial database is useful
and a tuning run can be resumed where the last one stopped.

Where databases live: ``$SEGCOMPILE_TUNING_CACHE`` if set, else ``~/.cache/segcompile/tuning``; one folder
per :class:`TuningKey`, named by profile, model hash, shape and a digest of the whole key.

Tuning itself needs apache-tvm-ffi 0.1.14.post0 (0.1.15.post2 segfaults in ``ToJSONGraph`` while saving
records, see FIELD-NOTES; the base dependencies pin it, tensorize needs it too) plus psutil, cloudpickle and
xgboost (the ``tune`` extra, which ``make`` installs); applying a finished database needs neither.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segcompile.errors import SegcompileError

CACHE_ENV = "SEGCOMPILE_TUNING_CACHE"
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
KEY_FILE = "key.json"
REPORT_FILE = "tuning.json"
TUNING_PACKAGES = ("psutil", "cloudpickle", "xgboost")  # modules MetaSchedule imports
BUILD_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class TuningKey:
    """What a tuning database is valid for: the program (model bytes + shape) and the target it runs on."""

    profile: str
    model_sha256: str
    input_shape: tuple[int, ...]
    target: dict[str, Any]

    def digest(self) -> str:
        """A stable hash of the whole key (the target dict included)."""
        payload = json.dumps(asdict(self), sort_keys=True, default=list)
        return hashlib.sha256(payload.encode()).hexdigest()

    def folder_name(self) -> str:
        shape = "x".join(str(d) for d in self.input_shape)
        return f"{self.profile}-{self.model_sha256[:12]}-{shape}-{self.digest()[:10]}"


@dataclass(frozen=True)
class TaskResult:
    """One tuned kernel: its name, how often the program calls it, trials spent, best time found."""

    name: str
    weight: int
    trials: int
    best_us: float | None
    skipped: bool = False  # already in the database from an earlier run


@dataclass
class TuningReport:
    """What :func:`tune_module` did (also written as ``tuning.json`` into the database folder)."""

    directory: str
    key: dict[str, Any]
    tasks_total: int
    budget_seconds: float
    trials_per_task: int
    seconds: float = 0.0
    tasks: list[TaskResult] = field(default_factory=list)

    @property
    def tuned(self) -> int:
        return sum(1 for t in self.tasks if not t.skipped)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tuned"] = self.tuned
        out["in_database"] = len(self.tasks)
        return out


def cache_root() -> Path:
    """The folder holding every tuning database."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "segcompile" / "tuning"


def database_dir(key: TuningKey, root: Path | str | None = None) -> Path:
    """Folder of the database for ``key`` (it need not exist yet)."""
    return Path(root or cache_root()) / key.folder_name()


def find_database(key: TuningKey, root: Path | str | None = None):
    """The cached database for ``key`` if one with at least one record exists, else None."""
    folder = database_dir(key, root)
    records = folder / RECORD_FILE
    if not (folder / WORKLOAD_FILE).is_file() or not records.is_file() or records.stat().st_size == 0:
        return None
    stored = _read_key(folder)
    if stored is not None and stored != _key_json(key):
        # Folder names carry a 10-hex digest; a clash would apply schedules of another program.
        raise SegcompileError(f"{folder}: tuning database belongs to another key ({stored})")
    return open_database(folder)


def open_database(folder: Path | str):
    """Open (or create) the JSON database in ``folder``."""
    from tvm.s_tir import meta_schedule as ms

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(
        path_workload=str(folder / WORKLOAD_FILE),
        path_tuning_record=str(folder / RECORD_FILE),
        allow_missing=True,
    )


def input_shape_of(mod) -> tuple[int, ...]:
    """Static shape of ``main``'s first parameter (what a database key records)."""
    param = mod["main"].params[0]
    return tuple(int(d) for d in param.ty.shape.values)


def legalize(mod, target):
    """The CPU pipeline up to fused TIR kernels (what tasks are extracted from and the database matches)."""
    import tvm
    import tvm.relax.backend.cpu_generic.pipeline as cpu

    with target:
        passes = layout_passes(target) + cpu.library_dispatch_passes(target) + legalize_passes()
        return tvm.transform.Sequential(passes)(mod)


def legalize_passes() -> list:
    """TVM's CPU legalization and fusion (cpu_generic.legalize_passes), with ``take`` kernels fusable."""
    from tvm import relax

    from segcompile.compile.passes import MarkTakeInjective

    return [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        MarkTakeInjective(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def layout_passes(target) -> list:
    """Channels-last convolutions on x86, and VNNI dot-product kernels for int8 ones where the CPU has VNNI.

    NHWC puts the output channels innermost: convolutions vectorize along channels (every layer has a
    multiple of 8 or 16) instead of along image rows of any width, and int8 dot products need four input
    channels side by side. ConvertLayout carries the layout through the elementwise chain and transposes
    only where an operator has no NHWC form (a few resizes, the entrance and the exit).
    """
    from tvm import relax

    from segcompile.compile.depthwise_pointwise import fuse_depthwise_into_pointwise
    from segcompile.compile.dot_product_conv import rewrite_int8_convolutions, supports_vnni
    from segcompile.compile.passes import ClipKernelsToOps, PadConvOutputChannels, ResizeToTapTables

    if not str(target.attrs.get("mtriple", "")).startswith("x86_64"):
        return []
    # conv2d_transpose stays NCHW: TVM has no NHWC legalization for it (the VM would meet the bare op).
    desired = {"relax.nn.conv2d": ["NHWC", "HWIO"], "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}
    passes = [ClipKernelsToOps(), relax.transform.ConvertLayout(desired), ResizeToTapTables()]
    if supports_vnni(target):
        passes.append(rewrite_int8_convolutions())
    # Fusing after the channel padding: the fused 1x1 then writes whole vectors too.
    return [*passes, PadConvOutputChannels(16), fuse_depthwise_into_pointwise()]


def tuned_pipeline(target, database=None, hand_schedules: bool = True):
    """TVM's fused CPU pipeline, with the database's schedules on the kernels it holds and the hand-written
    schedules (cpu_schedules.py) on the rest."""
    import tvm
    import tvm.relax.backend.cpu_generic.pipeline as cpu
    from tvm import relax

    from segcompile.compile.cpu_schedules import schedule_module_pass

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with contextlib.ExitStack() as stack:
            # Passes read the target (and the database) from the context when they are constructed.
            stack.enter_context(target)
            scheduling = []
            if database is not None:
                stack.enter_context(database)
                scheduling.append(relax.transform.MetaScheduleApplyDatabase(enable_warning=False))
            if hand_schedules:
                scheduling.append(schedule_module_pass())
            # Scheduling comes after FuseTIR (in legalize_passes): the kernels then have the structure
            # the tuning tasks were extracted with.
            passes = (
                layout_passes(target)
                + cpu.library_dispatch_passes(target)
                + legalize_passes()
                + scheduling
                + cpu.dataflow_lower_passes(target)
                + cpu.finalize_passes(target)
            )
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def compile_tuned(mod, target, database=None, hand_schedules: bool = True):
    """Compile ``mod`` for ``target``: ``database`` schedules where it has them, hand schedules elsewhere.

    ``database=None, hand_schedules=False`` is TVM's plain fused CPU pipeline (the untuned baseline).
    """
    import tvm

    return tvm.compile(mod, target=target, relax_pipeline=tuned_pipeline(target, database, hand_schedules))


def check_tuning_available() -> None:
    """Fail with a clear message when the installed packages cannot run MetaSchedule tuning."""
    from importlib import metadata, util

    # Modules, not distributions: xgboost-cpu (the tune extra) provides the `xgboost` module.
    missing = [name for name in TUNING_PACKAGES if util.find_spec(name) is None]
    try:
        ffi = metadata.version("apache-tvm-ffi")
    except metadata.PackageNotFoundError:
        ffi = "missing"
    problems = []
    if missing:
        problems.append(f"missing packages {', '.join(missing)}")
    if ffi != "0.1.14.post0":
        problems.append(
            f"apache-tvm-ffi is {ffi} (MetaSchedule segfaults saving records unless 0.1.14.post0)"
        )
    if problems:
        raise SegcompileError(
            "segcompile tune: "
            + "; ".join(problems)
            + " -- pip install apache-tvm-ffi==0.1.14.post0 psutil cloudpickle xgboost-cpu"
            + " (the `tune` extra: pip install -e '.[tune]')"
        )


def tune_module(
    mod,
    target,
    key: TuningKey,
    *,
    budget_seconds: float = 300.0,
    trials_per_task: int = 32,
    max_tasks: int | None = None,
    seed: int = 0,
    root: Path | str | None = None,
    progress: bool | None = None,
    on_task: Callable[[TaskResult], None] | None = None,
) -> TuningReport:
    """Tune the kernels of ``mod`` for ``target`` into the cached database of ``key``, heaviest first.

    The budget is checked between kernels (a started kernel finishes its trials), so a run takes about
    ``budget_seconds`` plus one kernel. Kernels already in the database are skipped: running again with a
    budget continues where the last run stopped.
    """
    import tvm
    from tqdm import tqdm
    from tvm.s_tir import meta_schedule as ms

    check_tuning_available()
    if budget_seconds <= 0 or trials_per_task <= 0:
        raise SegcompileError("segcompile tune: --budget and --trials must be positive")
    folder = database_dir(key, root)
    folder.mkdir(parents=True, exist_ok=True)
    stored = _read_key(folder)
    if stored is not None and stored != _key_json(key):
        raise SegcompileError(f"{folder}: tuning database belongs to another key ({stored})")
    (folder / KEY_FILE).write_text(_key_json(key) + "\n")
    database = open_database(folder)

    # MetaSchedule's CPU rules read the core count from the target (parallel loops); the key keeps the
    # build target, which carries no core count, so builds find the database.
    tuning_target = tvm.target.Target({**target.export(), "num-cores": os.cpu_count() or 1})
    legal = legalize(mod, tuning_target)
    tasks = ms.relax_integration.extract_tasks(legal, tuning_target)
    # VNNI convolutions and fused depthwise + 1x1 kernels keep their hand schedules: MetaSchedule's CPU
    # rules know neither our dot-product intrinsic nor two reductions in one kernel.
    tasks = [
        task
        for task in tasks
        if "dot_product_conv2d" not in task.task_name and "depthwise_pointwise" not in task.task_name
    ]
    tasks.sort(key=_task_cost, reverse=True)
    if max_tasks is not None:
        tasks = tasks[:max_tasks]
    report = TuningReport(str(folder), asdict(key), len(tasks), budget_seconds, trials_per_task)
    started = time.perf_counter()
    bar = tqdm(
        tasks, desc="tuning kernels", unit="kernel", disable=None if progress is None else not progress
    )
    for task in bar:
        if time.perf_counter() - started > budget_seconds:
            break
        mod_task = task.dispatched[0]
        if database.has_workload(mod_task) and _best_us(database, mod_task, tuning_target) is not None:
            result = TaskResult(
                task.task_name, int(task.weight), 0, _best_us(database, mod_task, tuning_target), skipped=True
            )
        else:
            result = _tune_one(task, database, folder, trials_per_task, seed, tuning_target)
        report.tasks.append(result)
        if on_task is not None:
            on_task(result)
        bar.set_postfix_str(f"{result.name[:24]} {result.best_us or 0:.0f}us")
    bar.close()
    report.seconds = round(time.perf_counter() - started, 3)
    (folder / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    return report


def _tune_one(task, database, folder: Path, trials: int, seed: int, target) -> TaskResult:
    from tvm.s_tir import meta_schedule as ms

    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        [task], work_dir=str(folder / "logs"), seed=seed
    )
    ms.tune.tune_tasks(
        tasks=contexts,
        task_weights=weights,
        work_dir=str(folder / "logs"),
        max_trials_global=trials,
        max_trials_per_task=trials,
        num_trials_per_iter=min(trials, 16),
        database=database,
        # The default 30 s build timeout kills every candidate on a loaded 2-core machine.
        builder=ms.builder.LocalBuilder(timeout_sec=BUILD_TIMEOUT_SECONDS),
    )
    return TaskResult(
        task.task_name, int(task.weight), trials, _best_us(database, task.dispatched[0], target)
    )


def _best_us(database, mod_task, target) -> float | None:
    record = database.query_tuning_record(mod_task, target, "main")
    if record is None or not record.run_secs:
        return None
    secs = [float(s) for s in record.run_secs]
    return round(1e6 * sum(secs) / len(secs), 2)


def _task_cost(task) -> float:
    """Estimated work of a task (FLOPs x calls): the heavy convolutions are tuned first."""
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        flops = float(estimate_tir_flops(task.dispatched[0]))
    except Exception:  # kernels the estimator cannot read (take, concat) are cheap copies
        flops = 0.0
    return flops * float(task.weight)


def _key_json(key: TuningKey) -> str:
    return json.dumps(asdict(key), sort_keys=True, default=list)


def _read_key(folder: Path) -> str | None:
    try:
        return json.dumps(json.loads((folder / KEY_FILE).read_text()), sort_keys=True, default=list)
    except (OSError, ValueError):
        return None


def database_for_core(profile_name: str, qdq_onnx: Path | str, input_shape, core, root=None):
    """The cached database of a board core's build of ``qdq_onnx`` (None when nobody tuned it)."""
    from segcompile.artifacts import sha256_file
    from segcompile.compile.targets import target_dict

    shape = tuple(int(d) for d in input_shape)
    key = TuningKey(profile_name, sha256_file(qdq_onnx), shape, target_dict(core))
    return find_database(key, root)
