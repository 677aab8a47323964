"""Running a sweep on Ray: every job's build, evaluation shards and finish as tasks, then one table.

Ray does the scheduling (no scheduler of our own): per job, one build task, one task per evaluation
shard (they wait for the build) and one finish task (it waits for the shards); all are submitted at
once and Ray runs whatever is ready on the free CPUs, one CPU per task. Locally a Ray instance is
started for the sweep and shut down after it; with an address the tasks go to that cluster, whose
nodes must see the same paths (a shared file system) and have segcompile installed.

Ray is imported here only, inside functions: no other command pays for it, and without it installed
the sweep says how to get it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from segcompile.errors import SegcompileError
from segcompile.sweep import steps
from segcompile.sweep.config import SweepConfig
from segcompile.sweep.jobs import Job, expand_jobs, finished_state
from segcompile.sweep.table import BUILT, FAILED, REUSED, SweepRow, TableNotes, row_from_folder, write_tables

INSTALL_HINT = "pip install 'segcompile[distributed]'"
# Each task is one process on one CPU: keep every library in it to one thread, so tasks do not fight.
TASK_ENV = {"TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
# Task results are small (confusion matrices, a few sample frames): a small object store is plenty.
OBJECT_STORE_BYTES = 256 * 2**20
# A worker process that dies (e.g. killed for memory) is retried once; a SegcompileError is not.
TASK_RETRIES = 1


@dataclass
class SweepResult:
    """The rows of the table, where it was written, and the jobs that failed (label -> message)."""

    out: Path
    rows: list[SweepRow]
    tables: dict[str, Path]
    failures: dict[str, str] = field(default_factory=dict)


def import_ray():
    """The ray module, or a SegcompileError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise SegcompileError(
            f"segcompile sweep runs on Ray, which is not installed: {INSTALL_HINT}"
        ) from exc
    return ray


def run_sweep(
    config: SweepConfig,
    out: Path | str | None = None,
    address: str | None = None,
    workers: int | None = None,
    echo: Callable[[str], None] = click.echo,
    progress: bool | None = None,
) -> SweepResult:
    """Build every job of ``config`` not already finished, on Ray; write the table into the out folder.

    ``out`` overrides the file's ``out``. ``address`` is a Ray cluster (``auto``, ``ray://host:port``);
    without it a local Ray with ``workers`` CPUs (default: all) runs the tasks. If this process has
    already started Ray, that instance is used as it is.
    """
    out = Path(out).expanduser().absolute() if out is not None else config.out
    if out is None:
        raise SegcompileError(f"{config.source}: out: no output folder (set out: in the file or pass --out)")
    if workers is not None and workers < 1:
        raise SegcompileError(f"--workers: must be at least 1, got {workers}")
    jobs = expand_jobs(config, out)
    out.mkdir(parents=True, exist_ok=True)

    pending: list[Job] = []
    status: dict[str, str] = {}
    for job in jobs:
        done, reason = finished_state(job)
        if done:
            status[job.label] = REUSED
            echo(f"reused  {job.label} ({reason})")
        else:
            pending.append(job)
            echo(f"queued  {job.label} ({reason})")

    failures: dict[str, str] = {}
    if pending:
        ray = import_ray()
        started_here = start_ray(ray, address, workers)
        try:
            failures = _run_jobs(ray, pending, progress)
        finally:
            if started_here:
                ray.shutdown()
        for job in pending:
            status[job.label] = FAILED if job.label in failures else BUILT
            if job.label in failures:
                steps.job_logger(job)(f"== {job.label}: failed: {failures[job.label]}")
                echo(f"failed  {job.label}: {failures[job.label]} (log: {job.log})")
            else:
                echo(f"built   {job.label}")

    rows = [row_from_folder(job, out, status[job.label], failures.get(job.label)) for job in jobs]
    notes = TableNotes(
        calib=f"{config.calib.data}, first {config.calib.frames} frames per model",
        eval=f"{config.eval.data}, "
        + (f"{config.eval.frames} frames" if config.eval.frames else "all frames"),
        shard_size=config.eval.shard_size,
        per_model_data=tuple(
            f"{m.label} uses its own data: calibration {m.calib or config.calib.data}, "
            f"evaluation {m.eval or config.eval.data}."
            for m in config.models
            if m.calib or m.eval
        ),
    )
    tables = write_tables(rows, out, notes)
    return SweepResult(out=out, rows=rows, tables=tables, failures=failures)


def start_ray(ray, address: str | None, workers: int | None) -> bool:
    """Start (or connect to) Ray unless this process already did; True when it was started here."""
    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {
        "logging_level": logging.ERROR,
        # Task output goes to each job's log file; the terminal shows the progress bar only.
        "log_to_driver": False,
        "runtime_env": {"env_vars": dict(TASK_ENV)},
    }
    if address is None:
        ray.init(
            address="local",
            num_cpus=workers or os.cpu_count() or 1,
            include_dashboard=False,
            object_store_memory=OBJECT_STORE_BYTES,
            **quiet,
        )
        return True
    if workers is not None:
        raise SegcompileError(
            "--workers: only for a local Ray; a cluster (--address) schedules on its own CPUs"
        )
    try:
        ray.init(address=address, **quiet)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError... for a bad address
        raise SegcompileError(
            f"--address {address}: cannot connect to Ray ({' '.join(str(exc).split())})"
        ) from exc
    return True


def _run_jobs(ray, jobs: list[Job], progress: bool | None) -> dict[str, str]:
    """Submit every task of ``jobs``, wait for them with a progress bar; failure messages by job label."""
    remote = {
        name: ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(getattr(steps, name))
        for name in ("build_step", "shard_step", "finish_step")
    }
    owner: dict[Any, Job] = {}
    finals: dict[Any, Job] = {}
    for job in jobs:
        built = remote["build_step"].remote(job)
        shards = [remote["shard_step"].remote(job, start, stop, built) for start, stop in job.shards()]
        final = remote["finish_step"].remote(job, *shards)
        for ref in (built, *shards, final):
            owner[ref] = job
        finals[final] = job

    failures: dict[str, str] = {}
    remaining = list(owner)
    disable = None if progress is None else not progress
    with tqdm(total=len(remaining), desc="sweep", unit="task", disable=disable) as bar:
        while remaining:
            ready, remaining = ray.wait(remaining, num_returns=1)
            for ref in ready:
                bar.update(1)
                if ref not in finals:
                    continue
                # A failed build or shard fails the finish task with the same error: one get tells all.
                try:
                    ray.get(ref)
                except Exception as exc:  # RayTaskError wraps whatever the task raised
                    failures[finals[ref].label] = failure_message(exc)
                    bar.set_postfix(failed=len(failures))
    return failures


def failure_message(exc: BaseException) -> str:
    """One line for a failed task: the SegcompileError's message, else the exception type and text."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, SegcompileError):
        return " ".join(str(cause).split())
    text = " ".join(str(cause).split())
    lines = [line for line in str(cause).splitlines() if line.strip()]
    if lines and len(text) > 300:
        text = lines[-1].strip()
    return f"{type(cause).__name__}: {text}"
