"""The verify stage: float vs int8 mIoU of a build folder, written to report.json."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from PIL import Image

from segcompile.artifacts import atomic_path, write_json_atomic
from segcompile.data.frames import SegmentationDataset
from segcompile.errors import SegcompileError
from segcompile.modelinfo import BINARY_CLASS_NAMES, ModelInfo, read_model_info
from segcompile.report.assemble import (
    REPORT_VERSION,
    build_identity,
    calibration_frames,
    layer_errors,
    lowering_summary,
    quantization_summary,
    read_json,
    stage_timings,
)
from segcompile.verify import runners as runner_kinds
from segcompile.verify.evaluate import (
    Evaluator,
    FrameScores,
    RunnerScore,
    Sample,
    merge_scores,
    sample_indices,
    select_frames,
)
from segcompile.verify.fallback import (
    RANKINGS,
    FallbackResult,
    FloatFallback,
    build_host_library,
    rank_by_sensitivity,
    rank_by_sqnr,
    run_fallback,
)
from segcompile.verify.gate import gate_record
from segcompile.verify.metrics import effective_classes, iou_per_class
from segcompile.verify.qdq_layers import QdqGraph

SAMPLES_DIR = "verify_samples"
METRIC_NOTE = (
    "Confusion-matrix mIoU over the evaluation frames at the model's input resolution; masks resized to it "
    "with nearest neighbour; label 255 ignored; classes absent from both labels and predictions excluded. "
    "mIoU and IoU are in percent, miou_drop in percent points (float minus int8)."
)


@dataclass(frozen=True)
class VerifyConfig:
    """Options of the verify stage."""

    int8_runner: str = "auto"  # auto | tvm-host | tvm-aarch64-qemu | onnxruntime-qdq
    compare_qdq: bool = True  # also score onnxruntime on the QDQ model when int8 runs compiled code
    max_frames: int | None = None  # first N held-out frames
    allow_overlap: bool = False  # allow evaluating on calibration frames
    max_drop: float | None = None  # recorded in the report; the gate itself is verify.gate.check_gate
    num_samples: int = 3
    batch_size: int = 8
    threads: int = 0


@dataclass(frozen=True)
class VerifyResult:
    """The headline numbers of a verify run (percent / percent points) and where the report is."""

    report_path: Path
    float_miou: float | None  # None when no evaluation frame has a mask
    int8_miou: float | None
    miou_drop: float | None
    pixel_agreement: float
    int8_runner: str
    frames_eval: tuple[str, ...]
    report: dict[str, Any] = field(repr=False, default_factory=dict)


def load_model_info(build_dir: Path) -> ModelInfo:
    """The ModelInfo stored in the build's float.onnx."""
    path = build_dir / "float.onnx"
    if not path.is_file():
        raise SegcompileError(f"{path}: not found; run `segcompile export` into {build_dir} first")
    return read_model_info(onnx.load(str(path), load_external_data=False), str(path))


def check_classes(info: ModelInfo, dataset: SegmentationDataset) -> ModelInfo:
    """Refuse masks labelled with another class list than the model's (the mIoU would be meaningless).

    A model that does not name its classes (an ONNX file from elsewhere: ``class_0``, ``class_1``...)
    takes the dataset's names when their number matches; the returned info carries them.
    """
    theirs = tuple(getattr(dataset, "class_names", ()) or ())
    ours = effective_classes(info)
    unnamed = all(name == f"class_{index}" for index, name in enumerate(info.class_names)) or (
        info.output_kind == "probability" and tuple(info.class_names) == BINARY_CLASS_NAMES
    )
    if theirs and unnamed and len(theirs) == len(ours):
        return replace(info, class_names=theirs)
    if theirs and info.class_names and theirs != ours:
        source = getattr(dataset, "spec", "evaluation data")
        raise SegcompileError(
            f"{source}: its classes ({', '.join(theirs[:4])}, ...) differ from the model's "
            f"({', '.join(ours[:4])}, ...); evaluate on data labelled for this model"
        )
    return info


def run_verify(
    config: VerifyConfig,
    build_dir: Path | str,
    eval_dataset: SegmentationDataset,
    calib_names: Sequence[str] | None = None,
) -> VerifyResult:
    """Evaluate float and int8 on ``eval_dataset`` and write ``build_dir/report.json``.

    ``calib_names`` are the frames used for calibration (default: the names quant_params.json lists);
    they are left out of the evaluation unless ``config.allow_overlap``.
    """
    started = time.perf_counter()
    build_dir = Path(build_dir)
    check_classes(load_model_info(build_dir), eval_dataset)
    # A verify that fails half-way must not leave an earlier report looking like this run's.
    for stale in ("report.json", "report.md", "report.html"):
        (build_dir / stale).unlink(missing_ok=True)
    if calib_names is None:
        calib_names = calibration_frames(read_json(build_dir / "quant_params.json"))
    indices, dropped = select_frames(
        list(eval_dataset.names), calib_names, config.max_frames, config.allow_overlap
    )
    # One pass over every frame is the one-shard case of a sharded evaluation (see score_frames).
    scores = score_frames(config, build_dir, eval_dataset, indices)
    return report_from_scores(
        config, build_dir, eval_dataset, indices, [scores], list(calib_names), dropped,
        seconds=time.perf_counter() - started,
    )


def int8_runners(config: VerifyConfig, build_dir: Path) -> dict[str, runner_kinds.Runner]:
    """The int8 runners a verify scores: ``int8`` (config.int8_runner) and, optionally, ``qdq``."""
    int8 = runner_kinds.int8_runner(build_dir, config.int8_runner, config.threads)
    runners = {"int8": int8}
    if config.compare_qdq and int8.name != runner_kinds.QDQ and (build_dir / "int8.qdq.onnx").is_file():
        runners["qdq"] = runner_kinds.OnnxRuntimeRunner(
            build_dir / "int8.qdq.onnx", runner_kinds.QDQ, config.threads
        )
    return runners


def score_frames(
    config: VerifyConfig,
    build_dir: Path | str,
    eval_dataset: SegmentationDataset,
    indices: Sequence[int],
    start: int = 0,
    stop: int | None = None,
) -> FrameScores:
    """Float and int8 scores of the evaluation frames ``indices[start:stop]`` with run_verify's runners.

    ``indices`` is the whole evaluation (as :func:`select_frames` picks it), so that a range keeps the
    sample frames a single pass over all of them would keep. The scores of ranges that cover
    ``indices`` add up exactly to one pass (:func:`report_from_scores` sums them): evaluations can be
    split into shards run in parallel.
    """
    started = time.perf_counter()
    build_dir = Path(build_dir)
    stop = len(indices) if stop is None else stop
    if not 0 <= start < stop <= len(indices):
        raise ValueError(f"frame range {start}..{stop} is not inside 0..{len(indices)}")
    info = check_classes(load_model_info(build_dir), eval_dataset)
    samples = [p - start for p in sample_indices(len(indices), config.num_samples) if start <= p < stop]
    float_runner = runner_kinds.float_runner(build_dir, config.threads)
    evaluator = Evaluator(eval_dataset, list(indices)[start:stop], info, float_runner, config.batch_size,
                          sample_positions=samples)
    scores = evaluator.score(int8_runners(config, build_dir))
    return FrameScores(start, stop, scores, evaluator.float_seconds, time.perf_counter() - started)


def report_from_scores(
    config: VerifyConfig,
    build_dir: Path | str,
    eval_dataset: SegmentationDataset,
    indices: Sequence[int],
    parts: Sequence[FrameScores],
    calib_names: Sequence[str],
    dropped: Sequence[str] = (),
    seconds: float | None = None,
) -> VerifyResult:
    """Write ``report.json`` (and the sample pictures) from the scores of ranges covering ``indices``.

    The report is the one :func:`run_verify` writes for the same frames: the per-range confusion
    matrices are summed, so every accuracy number is exactly the single-process one. ``seconds`` is
    recorded as the verify time (default: the ranges' seconds added up).
    """
    build_dir = Path(build_dir)
    info = check_classes(load_model_info(build_dir), eval_dataset)
    for stale in ("report.json", "report.md", "report.html"):
        (build_dir / stale).unlink(missing_ok=True)
    scores, float_seconds = merge_scores(parts, len(indices))
    # assemble_report reads only the frame bookkeeping of an evaluator; nothing runs here.
    evaluator = Evaluator(eval_dataset, indices, info, None, config.batch_size, config.num_samples)
    evaluator.float_seconds = float_seconds
    main = scores["int8"]
    quant_params = read_json(build_dir / "quant_params.json")
    report = assemble_report(build_dir, info, evaluator, main, scores.get("qdq"), list(calib_names),
                             list(dropped), quant_params, config)
    total = sum(part.seconds for part in parts) if seconds is None else seconds
    report["timings"]["verify"] = round(total, 3)
    write_samples(build_dir / SAMPLES_DIR, main.samples)
    path = write_json_atomic(build_dir / "report.json", report)
    return VerifyResult(
        report_path=path,
        float_miou=report["float_miou"],
        int8_miou=report["int8_miou"],
        miou_drop=report["miou_drop"],
        pixel_agreement=report["pixel_agreement"],
        int8_runner=main.runner,
        frames_eval=tuple(evaluator.names),
        report=report,
    )


def _percent(value: float) -> float | None:
    """Percent rounded for stable JSON; None (JSON null) for an undefined value."""
    return None if value is None or math.isnan(value) else round(100.0 * value, 4)


def assemble_report(
    build_dir: Path,
    info: ModelInfo,
    evaluator: Evaluator,
    main: RunnerScore,
    qdq: RunnerScore | None,
    calib_names: list[str],
    dropped: list[str],
    quant_params: dict[str, Any] | None,
    config: VerifyConfig,
) -> dict[str, Any]:
    """The report.json document (see DESIGN.md for the fields the checks read)."""
    tally = main.tally
    float_iou = iou_per_class(tally.float_confusion)
    int8_iou = iou_per_class(tally.int8_confusion)
    labelled = tally.float_confusion.sum(axis=1)
    float_miou, int8_miou = _percent(tally.float_miou), _percent(tally.int8_miou)
    drop = None if float_miou is None or int8_miou is None else round(float_miou - int8_miou, 4)
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        **build_identity(build_dir),
        "model_info": {
            "name": info.name,
            "num_classes": info.num_classes,
            "input_size": list(info.input_size),
            "output_kind": info.output_kind,
            "threshold": info.threshold if info.output_kind == "probability" else None,
        },
        "metric": METRIC_NOTE,
        "units": {"miou": "percent", "miou_drop": "percent points", "pixel_agreement": "percent"},
        "float_runner": runner_kinds.FLOAT,
        "int8_runner": main.runner,
        "float_miou": float_miou,
        "int8_miou": int8_miou,
        "miou_drop": drop,
        "pixel_agreement": _percent(tally.pixel_agreement),
        "per_class": [
            {
                "id": cid,
                "name": name,
                "float_iou": _percent(float_iou[cid]),
                "int8_iou": _percent(int8_iou[cid]),
                "pixels": int(labelled[cid]),
            }
            for cid, name in enumerate(evaluator.classes)
        ],
        "confusion": {"float": tally.float_confusion.tolist(), "int8": tally.int8_confusion.tolist()},
        "frames_calibration": sorted(calib_names),
        "frames_eval": evaluator.names,
        "frames_excluded_overlap": dropped,
        "eval_dataset": getattr(evaluator.dataset, "spec", None),
        # Frames the dataset reader refused (missing/corrupt/mismatched files), counted, never silently lost.
        "frames_skipped": [
            {"name": skipped.name, "path": str(skipped.path), "reason": skipped.reason}
            for skipped in getattr(evaluator.dataset, "skipped", ())
        ],
        "quantization": quantization_summary(quant_params),
        # Nodes the compiled module runs in float on the ARM core (never silently: named with the reason).
        "integer_lowering": lowering_summary(build_dir),
        "layers": layer_errors(quant_params),
        # Seconds per stage; the verify_* entries split out the time spent inside the runners.
        "timings": {
            **stage_timings(build_dir),
            "verify_float_inference": round(evaluator.float_seconds, 3),
            "verify_int8_inference": round(main.seconds, 3),
        },
        "gate": gate_record(drop if drop is not None else float("nan"), config.max_drop),
        "samples": [_sample_record(i, s) for i, s in enumerate(main.samples)],
    }
    if qdq is not None:
        qdq_miou = _percent(qdq.tally.int8_miou)
        report["comparison"] = {
            "runner": qdq.runner,
            "miou": qdq_miou,
            "miou_drop": None if float_miou is None or qdq_miou is None else round(float_miou - qdq_miou, 4),
            "pixel_agreement_with_float": _percent(qdq.tally.pixel_agreement),
        }
        report["timings"]["verify_qdq_inference"] = round(qdq.seconds, 3)
    return report


def _sample_record(index: int, sample: Sample) -> dict[str, Any]:
    stem = f"{index:02d}"
    return {
        "name": sample.name,
        "image": f"{SAMPLES_DIR}/{stem}_image.png",
        "mask": None if sample.mask is None else f"{SAMPLES_DIR}/{stem}_mask.png",
        "float": f"{SAMPLES_DIR}/{stem}_float.png",
        "int8": f"{SAMPLES_DIR}/{stem}_int8.png",
    }


def write_samples(folder: Path, samples: list[Sample]) -> None:
    """Save the sample frames as PNGs (label maps as raw class ids) for the report's pictures.

    PNG via PIL is byte-deterministic, unlike numpy's .npz (zip timestamps).
    """
    with atomic_path(folder) as temp:
        temp.mkdir()
        for index, sample in enumerate(samples):
            record = _sample_record(index, sample)
            Image.fromarray(sample.image).save(temp / Path(record["image"]).name)
            if sample.mask is not None:
                Image.fromarray(np.asarray(sample.mask, np.uint8)).save(temp / Path(record["mask"]).name)
            Image.fromarray(sample.float_pred).save(temp / Path(record["float"]).name)
            Image.fromarray(sample.int8_pred).save(temp / Path(record["int8"]).name)


def run_verify_with_fallback(
    config: VerifyConfig,
    build_dir: Path | str,
    eval_dataset: SegmentationDataset,
    calib_names: Sequence[str] | None = None,
    requantize: Callable[[tuple[str, ...]], Path] | None = None,
    rank: str = "sensitivity",
    max_layers: int = 8,
    sensitivity_frames: int = 4,
) -> tuple[VerifyResult, FallbackResult | None]:
    """:func:`run_verify`, then — if the drop exceeds ``config.max_drop`` — the accuracy-aware fallback.

    ``requantize(excluded_layers) -> build folder`` makes a candidate with those layers out of int8;
    each candidate is judged by the same kind of int8 runner as the original. Without one, the
    default :class:`FloatFallback` keeps the layers in float inside the QDQ model under
    ``<build>/fallback/``; when the original was judged by the compiled host module, candidates are
    screened with onnxruntime on their QDQ model (a host build of the demo net takes minutes) and
    only the accepted one is compiled and confirmed by the compiled module.

    The outcome is added to ``report.json`` as ``fallback`` and the gate entry reflects the final
    drop; the accepted candidate gets its own full report.json. Returns the first verify result
    (with the updated report) and the fallback result (None if the drop was already in budget).
    """
    build_dir = Path(build_dir)
    if config.max_drop is None:
        raise SegcompileError("--fallback needs --max-drop POINTS (the budget the fallback works towards)")
    if rank not in RANKINGS:
        raise SegcompileError(f"--rank: unknown ranking {rank!r} (choose from {', '.join(RANKINGS)})")
    result = run_verify(config, build_dir, eval_dataset, calib_names)
    if result.miou_drop is None or result.miou_drop <= config.max_drop:
        return result, None
    calib_names = list(result.report.get("frames_calibration") or []) if calib_names is None else calib_names

    info = load_model_info(build_dir)
    names = list(eval_dataset.names)
    indices = [names.index(n) for n in result.frames_eval]
    evaluator = Evaluator(eval_dataset, indices, info, runner_kinds.float_runner(build_dir, config.threads),
                          config.batch_size, num_samples=0, keep_float=True)
    if rank == "sqnr":
        ranking = rank_by_sqnr(build_dir / "int8.qdq.onnx", read_json(build_dir / "quant_params.json"))
    else:
        from segcompile.data.preprocess import preprocess

        inputs = [preprocess(eval_dataset[i].image, info) for i in indices[:sensitivity_frames]]
        ranking = rank_by_sensitivity(build_dir / "float.onnx", build_dir / "int8.qdq.onnx", inputs,
                                      config.threads, read_json(build_dir / "quant_params.json"))

    confirm_on_host = requantize is None and result.int8_runner == runner_kinds.HOST
    if requantize is None:
        requantize = FloatFallback(build_dir, compile_host=False)
    if confirm_on_host:
        screen_kind = runner_kinds.QDQ
    elif config.int8_runner in (runner_kinds.QDQ, runner_kinds.QEMU):
        screen_kind = config.int8_runner
    else:
        screen_kind = "auto"

    def evaluate(candidate: Path) -> tuple[float, float]:
        runner = runner_kinds.int8_runner(candidate, screen_kind, config.threads)
        tally = evaluator.score({"int8": runner})["int8"].tally
        return 100.0 * tally.int8_miou, tally.miou_drop_points

    macs_total = QdqGraph(onnx.load(str(build_dir / "int8.qdq.onnx"))).total_macs
    fallback = run_fallback(ranking, requantize, evaluate, config.max_drop, result.miou_drop, macs_total,
                            max_layers, build_dir / "int8.qdq.onnx")
    fallback = replace(fallback, build_root=build_dir, precision=getattr(requantize, "precision", "float"),
                       screened_by=screen_kind if confirm_on_host else None)
    final = fallback.final
    if final is not None and (fallback.passed or not confirm_on_host):
        # A host build takes minutes on a real net: only an accepted candidate is compiled to confirm.
        if confirm_on_host:
            build_host_library(final.build_dir / "int8.qdq.onnx", final.build_dir / "host")
        # The accepted (or best) candidate gets its own full report, judged like the original.
        checked = run_verify(replace(config, compare_qdq=confirm_on_host), final.build_dir, eval_dataset,
                             calib_names)
        final = replace(final, int8_miou=checked.int8_miou, miou_drop=checked.miou_drop)
        fallback = replace(fallback, final=final, confirmed_by=checked.int8_runner,
                           passed=checked.miou_drop is not None and checked.miou_drop <= config.max_drop)
    report = dict(result.report)
    report["fallback"] = fallback.to_json()
    # e.g. layers whose float weights could not be matched to the int8 graph's frame
    report["fallback"]["notes"] = sorted(set(getattr(requantize, "notes", [])))
    final_drop = final.miou_drop if final else result.miou_drop
    report["gate"] = gate_record(float("nan") if final_drop is None else final_drop, config.max_drop)
    write_json_atomic(build_dir / "report.json", report)
    return replace(result, report=report), fallback
