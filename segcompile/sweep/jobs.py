"""A sweep's jobs: models x targets x methods, each a `segcompile build` folder with an input hash.

The input hash covers everything that decides what a job's folder holds -- model and weights, input
size, the target profile's content, the calibration method and scheme, the calibration and evaluation
frames (spec, count and names), the seed and the segcompile version -- and nothing that does not (the
shard size, the worker count, where the sweep runs). A folder whose ``manifest.json`` records the same
hash, with every file intact, is a finished job: the sweep reuses it instead of building it again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segcompile import __version__
from segcompile.artifacts import sha256_file
from segcompile.errors import SegcompileError
from segcompile.manifest import MANIFEST_JSON, check_manifest
from segcompile.pipeline import BuildConfig
from segcompile.sweep.config import MethodSpec, ModelSpec, SweepConfig, TargetSpec
from segcompile.verify.stage import VerifyConfig

HASH_SCHEMA = 1
BUILDS_DIR = "builds"
LOGS_DIR = "logs"
# Written into each job's build folder before manifest.json: latency, GMACs and the input hash.
JOB_JSON = "sweep_job.json"
HASH_KEY = "sweep_input_hash"


@dataclass(frozen=True)
class Job:
    """One row of the sweep: what to build, where, and on which frames it is evaluated."""

    model: ModelSpec
    target: TargetSpec
    method: MethodSpec
    build: BuildConfig  # what `segcompile build` would be given (eval included); build.out is the folder
    calib_names: tuple[str, ...]  # the frames the quantize stage calibrates on
    eval_indices: tuple[int, ...]  # positions in the evaluation dataset, in evaluation order
    eval_dropped: tuple[str, ...]  # evaluation frames left out because calibration used them
    shard_size: int
    input_hash: str
    log: Path

    @property
    def label(self) -> str:
        return f"{self.model.label} / {self.target.label} / {self.method.label}"

    @property
    def folder(self) -> Path:
        return Path(self.build.out)

    @property
    def verify_config(self) -> VerifyConfig:
        """The verify options of the job; one thread, as a task has one CPU."""
        return VerifyConfig(max_frames=self.build.eval_frames, threads=1)

    def shards(self) -> list[tuple[int, int]]:
        """``[start, stop)`` ranges of the evaluation frames, ``shard_size`` frames each (the last fewer)."""
        return shard_ranges(len(self.eval_indices), self.shard_size)


def shard_ranges(count: int, size: int) -> list[tuple[int, int]]:
    """Split ``count`` frames into consecutive ranges of ``size`` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"shard size must be at least 1, got {size}")
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def expand_jobs(config: SweepConfig, out: Path) -> list[Job]:
    """Every (model, target, method) of ``config``, in file order, with its folder under ``out/builds``.

    Datasets are opened here (cheap: file lists), so a bad data spec or an evaluation set with no
    frame left after removing the calibration frames fails before any work starts.
    """
    from segcompile.data.spec import open_dataset
    from segcompile.verify.evaluate import select_frames

    out = Path(out).absolute()
    datasets: dict[tuple[str, str], Any] = {}

    def dataset(spec: str, role: str, key: str):
        if (spec, role) not in datasets:
            try:
                datasets[spec, role] = open_dataset(spec, role=role)
            except SegcompileError as exc:
                raise SegcompileError(f"{config.source}: {key}: {exc}") from exc
        return datasets[spec, role]

    jobs = []
    for index, model in enumerate(config.models):
        calib_spec = model.calib or config.calib.data
        eval_spec = model.eval or config.eval.data
        calib_key = f"models[{index}].calib" if model.calib else "calib.data"
        eval_key = f"models[{index}].eval" if model.eval else "eval.data"
        calib_set = dataset(calib_spec, "calib", calib_key)
        if len(calib_set) == 0:
            raise SegcompileError(f"{config.source}: {calib_key}: {calib_spec} has no frames")
        # The same first-N rule as the build pipeline's quantize stage.
        calib_names = tuple(list(calib_set.names)[: min(config.calib.frames, len(calib_set))])
        eval_set = dataset(eval_spec, "eval", eval_key)
        try:
            indices, dropped = select_frames(list(eval_set.names), calib_names, config.eval.frames, False)
        except SegcompileError as exc:
            raise SegcompileError(f"{config.source}: {eval_key}: {eval_spec}: {exc}") from exc
        weights = _weights_hash(model)
        for target in config.targets:
            for method in config.methods:
                folder = out / BUILDS_DIR / model.label / target.label / method.label
                build = BuildConfig(
                    model=model.name,
                    target=target.spec,
                    calib=calib_spec,
                    out=folder,
                    eval=eval_spec,
                    checkpoint=str(model.checkpoint) if model.checkpoint else None,
                    input_size=model.input_size,
                    scheme=method.scheme,
                    method=method.method,
                    calib_frames=config.calib.frames,
                    eval_frames=config.eval.frames,
                    bias_correction=method.bias_correction,
                    seed=config.seed,
                )
                identity = {
                    "schema": HASH_SCHEMA,
                    "segcompile": __version__,
                    "model": model.name,
                    "weights_sha256": weights,
                    "input_size": model.input_size,
                    "target": target.label,
                    "profile_sha256": target.content_sha256,
                    "method": method.method,
                    "scheme": method.scheme,
                    "bias_correction": method.bias_correction,
                    "calib": {"data": calib_spec, "frames": config.calib.frames, "names": calib_names},
                    "eval": {
                        "data": eval_spec,
                        "frames": config.eval.frames,
                        "names": [eval_set.names[i] for i in indices],
                    },
                    "seed": config.seed,
                }
                log_name = f"{model.label}__{target.label}__{method.label}.log"
                jobs.append(
                    Job(
                        model=model,
                        target=target,
                        method=method,
                        build=build,
                        calib_names=calib_names,
                        eval_indices=tuple(indices),
                        eval_dropped=tuple(dropped),
                        shard_size=config.eval.shard_size,
                        input_hash=input_hash(identity),
                        log=out / LOGS_DIR / log_name,
                    )
                )
    return jobs


def input_hash(identity: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a job's inputs."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _weights_hash(model: ModelSpec) -> str | None:
    """sha256 of the weights the export stage will load (the checkpoint, else the bundled ones)."""
    from segcompile.zoo.registry import bundled_weights

    path = model.checkpoint or bundled_weights(model.name)
    return sha256_file(path) if path is not None else None


def finished_state(job: Job) -> tuple[bool, str]:
    """Whether ``job``'s folder is a finished build of exactly its inputs, and why (not)."""
    manifest_path = job.folder / MANIFEST_JSON
    if not manifest_path.is_file():
        return False, "not built yet" if not job.folder.exists() else "unfinished (no manifest.json)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError:
        return False, "manifest.json unreadable"
    recorded = (manifest.get("build") or {}).get(HASH_KEY) if isinstance(manifest, dict) else None
    if recorded != job.input_hash:
        return False, "inputs changed since it was built" if recorded else "not built by a sweep"
    if not (job.folder / JOB_JSON).is_file() or not (job.folder / "report.json").is_file():
        return False, f"{JOB_JSON} or report.json missing"
    problems = check_manifest(job.folder)
    if problems:
        return False, f"files differ from manifest.json ({problems[0]})"
    return True, "finished with the same inputs"
