"""What one sweep job does, as three plain functions that the engine runs as Ray tasks.

1. :func:`build_step`: export, quantize and compile through :func:`segcompile.pipeline.run_build`
   (the same stages and stage fingerprints as `segcompile build`).
2. :func:`shard_step`: the float and int8 confusion matrices of one range of the evaluation frames.
3. :func:`finish_step`: report.json from the summed matrices, report.md/html, GMACs, the latency of the
   host build of the integer module against onnxruntime, then manifest.json -- last, as in a build.

Nothing here imports Ray: the functions run as well in one process (the tests do that too).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from segcompile.artifacts import write_json_atomic
from segcompile.manifest import MANIFEST_JSON, write_manifest
from segcompile.sweep.jobs import HASH_KEY, JOB_JSON, Job
from segcompile.verify.evaluate import FrameScores

JOB_SCHEMA = "segcompile.sweep-job/1"
LATENCY_THREADS = 1
LATENCY_WARMUP = 2
LATENCY_REPEATS = 7


def job_logger(job: Job) -> Callable[[str], None]:
    """A line logger appending to the job's log file (tasks run away from any terminal)."""
    job.log.parent.mkdir(parents=True, exist_ok=True)

    def echo(line: str) -> None:
        with open(job.log, "a", encoding="utf-8") as handle:
            handle.write(line.rstrip("\n") + "\n")

    return echo


def build_step(job: Job) -> str:
    """Export, quantize and compile ``job`` into its folder; returns the folder.

    The build pipeline's verify stage is left to the shards; its manifest.json is removed again, since
    the folder is finished only once :func:`finish_step` has written the report and the manifest.
    """
    from segcompile.pipeline import run_build

    echo = job_logger(job)
    echo(f"== {job.label}: build (input hash {job.input_hash[:12]})")
    folder = job.folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_JSON).unlink(missing_ok=True)
    (folder / JOB_JSON).unlink(missing_ok=True)
    run_build(replace(job.build, eval=None), echo=echo)
    (folder / MANIFEST_JSON).unlink(missing_ok=True)
    echo("[sweep] manifest.json withheld: the folder is finished once the sharded verify has run")
    echo(f"[verify] {len(job.eval_indices)} frame(s) in {len(job.shards())} shard(s)")
    return str(folder)


def shard_step(job: Job, start: int, stop: int, built: str | None = None) -> FrameScores:
    """Float and int8 scores of the evaluation frames ``[start, stop)`` of ``job``.

    ``built`` is the result of :func:`build_step`; taking it makes the task wait for the build.
    """
    from segcompile.data.spec import open_dataset
    from segcompile.verify.stage import score_frames

    dataset = open_dataset(job.build.eval, role="eval")
    return score_frames(job.verify_config, job.folder, dataset, job.eval_indices, start, stop)


def finish_step(job: Job, *parts: FrameScores) -> dict[str, Any]:
    """Write report.json/md/html, sweep_job.json and manifest.json of ``job``; returns sweep_job.json."""
    from segcompile.compile.profiles import load_profile
    from segcompile.data.spec import open_dataset
    from segcompile.report.stage import write_report
    from segcompile.verify.stage import load_model_info, report_from_scores

    echo = job_logger(job)
    folder = job.folder
    dataset = open_dataset(job.build.eval, role="eval")
    result = report_from_scores(
        job.verify_config, folder, dataset, job.eval_indices, parts, job.calib_names, job.eval_dropped
    )
    echo(
        f"[verify] float mIoU {result.float_miou} %, int8 mIoU {result.int8_miou} %, drop {result.miou_drop}"
    )
    write_report(folder)
    info = load_model_info(folder)
    started = time.perf_counter()
    latency = measure_latency(folder)
    echo(
        f"[latency] TVM int8 / onnxruntime int8 = {latency['ratio']} ({time.perf_counter() - started:.1f} s)"
    )
    record = {
        "schema": JOB_SCHEMA,
        "input_hash": job.input_hash,
        "model": job.model.label,
        "target": job.target.label,
        "method": job.method.label,
        "gmacs": model_gmacs(job.model.name, info.num_classes, tuple(info.input_size)),
        "latency": latency,
        "shards": len(parts),
    }
    write_json_atomic(folder / JOB_JSON, record)
    write_manifest(
        folder,
        profile=load_profile(job.build.target),
        info=info,
        build={**asdict(job.build), HASH_KEY: job.input_hash},
    )
    echo(f"== {job.label}: finished")
    return record


def model_gmacs(name: str, num_classes: int, input_size: tuple[int, int]) -> float:
    """GigaMACs of the zoo network ``name`` at ``input_size`` (width, height), as built for the job."""
    import torch

    from segcompile.zoo.macs import count_macs
    from segcompile.zoo.registry import build_model

    width, height = input_size
    with torch.device("meta"):  # no weights are allocated: counting is instant even for large nets
        model = build_model(name, num_classes=num_classes)
    return round(count_macs(model, (1, 3, height, width)) / 1e9, 4)


def measure_latency(
    folder: Path, warmup: int = LATENCY_WARMUP, repeats: int = LATENCY_REPEATS
) -> dict[str, Any]:
    """Median latency of the host build of the integer module and of onnxruntime on the QDQ model.

    Both run side by side in one process, interleaved (segcompile.perf.timing), with one thread each, on
    the machine that ran the job; the ratio survives a busy machine far better than the times do. In a
    sweep task TVM's thread pool already has one thread (the engine sets TVM_NUM_THREADS), so this
    process measures; elsewhere a child process with that setting does (segcompile.perf.bench).
    """
    import json
    import os

    from segcompile.perf.bench import ORT_INT8, TVM_INT8, measure_threads, ratios
    from segcompile.perf.runners import RunnerSpec, make_runner
    from segcompile.perf.timing import time_interleaved

    folder = Path(folder)
    compiled = json.loads((folder / "compile.json").read_text())
    library = folder / compiled["host_reference"]["path"]
    shape = tuple(compiled["model"]["input_shape"])
    data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    specs = [
        RunnerSpec(ORT_INT8, "ort", "int8", str(folder / "int8.qdq.onnx")),
        RunnerSpec(TVM_INT8, "tvm", "int8", str(library)),
    ]
    if os.environ.get("TVM_NUM_THREADS") == str(LATENCY_THREADS):
        runners = {spec.name: make_runner(spec, LATENCY_THREADS) for spec in specs}
        stats = time_interleaved(runners, data, warmup, repeats, progress=False)
        latency = {name: value.to_dict() for name, value in stats.items()}
    else:
        latency = measure_threads(specs, data, LATENCY_THREADS, warmup, repeats)["latency"]
    return {
        "ratio": ratios(latency)["tvm_int8/ort_int8"],
        "tvm_int8_ms": latency[TVM_INT8]["median_ms"],
        "ort_int8_ms": latency[ORT_INT8]["median_ms"],
        "threads": LATENCY_THREADS,
        "warmup": warmup,
        "repeats": repeats,
    }
