"""Streaming float-vs-int8 evaluation over a set of frames.

Frames are read, preprocessed and run a batch at a time, so memory holds one batch of inputs
plus the float label maps (uint8, cached so that the accuracy-aware fallback can score several
int8 candidates against one float run).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from segcompile.data.frames import SegmentationDataset
from segcompile.errors import SegcompileError
from segcompile.modelinfo import ModelInfo
from segcompile.verify.metrics import EvalTally, effective_classes, predict_labels, resize_labels
from segcompile.verify.runners import Runner


@dataclass(frozen=True)
class Sample:
    """One frame kept for the report's pictures, everything at the model's input resolution."""

    name: str
    image: np.ndarray  # uint8 HxWx3 RGB
    mask: np.ndarray | None  # uint8 HxW
    float_pred: np.ndarray  # uint8 HxW
    int8_pred: np.ndarray  # uint8 HxW


@dataclass
class RunnerScore:
    """Float-vs-one-int8-runner totals, plus the samples kept along the way."""

    runner: str
    tally: EvalTally
    samples: list[Sample]
    seconds: float


def select_frames(
    names: Sequence[str], calib_names: Sequence[str] | None, max_frames: int | None, allow_overlap: bool
) -> tuple[list[int], list[str]]:
    """Indices of the evaluation frames to use, and the names dropped because calibration used them.

    Calibration and evaluation frames are disjoint by default: a frame the calibration saw would
    flatter the int8 model.
    """
    calib = set(calib_names or ())
    dropped = [] if allow_overlap else [n for n in names if n in calib]
    indices = [i for i, n in enumerate(names) if allow_overlap or n not in calib]
    if max_frames is not None:
        if max_frames < 1:
            raise SegcompileError(f"--frames: must be at least 1, got {max_frames}")
        indices = indices[:max_frames]
    if not indices:
        raise SegcompileError(
            "no evaluation frames left: every frame of the evaluation set was used for calibration "
            "(pick a held-out split, e.g. demo:eval, or pass --allow-overlap)"
        )
    return indices, dropped


def sample_indices(count: int, wanted: int) -> list[int]:
    """Positions (within the selected frames) of ``wanted`` evenly spread samples."""
    if wanted <= 0 or count == 0:
        return []
    wanted = min(wanted, count)
    return sorted({int(round(i * (count - 1) / max(wanted - 1, 1))) for i in range(wanted)})


class Evaluator:
    """Scores int8 runners against the float model on fixed frames.

    With ``keep_float`` the float label maps are cached after the first :meth:`score`, so later
    calls (the fallback's candidates) run only the int8 side; without it memory stays one batch.
    ``float_runner`` may be None for an evaluator that only describes its frames (nothing is scored).
    """

    def __init__(
        self,
        dataset: SegmentationDataset,
        indices: Sequence[int],
        info: ModelInfo,
        float_runner: Runner | None,
        batch_size: int = 8,
        num_samples: int = 3,
        keep_float: bool = False,
        sample_positions: Iterable[int] | None = None,
    ) -> None:
        self.dataset = dataset
        self.keep_float = keep_float
        self.indices = list(indices)
        self.info = info
        self.float_runner = float_runner
        self.batch_size = max(1, batch_size)
        self.classes = effective_classes(info)
        # A shard of a larger evaluation is told which of its frames are the whole evaluation's samples.
        if sample_positions is None:
            sample_positions = sample_indices(len(self.indices), num_samples)
        self.sample_positions = set(sample_positions)
        self._float_preds: list[np.ndarray] | None = None
        self.float_seconds = 0.0

    @property
    def names(self) -> list[str]:
        return [self.dataset.names[i] for i in self.indices]

    def _batches(self, desc: str):
        from segcompile.data.preprocess import preprocess, resize_mask

        size = tuple(self.info.input_size)
        with tqdm(total=len(self.indices), desc=desc, unit="frame", disable=None, leave=False) as bar:
            for start in range(0, len(self.indices), self.batch_size):
                positions = range(start, min(start + self.batch_size, len(self.indices)))
                frames = [self.dataset[self.indices[p]] for p in positions]
                inputs = [preprocess(f.image, self.info) for f in frames]
                masks = [None if f.mask is None else resize_mask(f.mask, size) for f in frames]
                yield list(positions), frames, inputs, masks
                bar.update(len(frames))

    def _labels(self, output: np.ndarray, source: str) -> np.ndarray:
        labels = predict_labels(output, self.info, source)
        return resize_labels(labels, tuple(self.info.input_size))

    def score(self, runners: Mapping[str, Runner]) -> dict[str, RunnerScore]:
        """Run the float model (unless cached) and every int8 runner; one tally per runner."""
        scores = {
            key: RunnerScore(runner.name, EvalTally(len(self.classes)), [], 0.0)
            for key, runner in runners.items()
        }
        cached = self._float_preds
        collected: list[np.ndarray] = []
        label = ", ".join(r.name for r in runners.values())
        for positions, frames, inputs, masks in self._batches(f"verify {label}"):
            if cached is not None:
                float_preds = {pos: cached[pos] for pos in positions}
            else:
                started = time.perf_counter()
                outputs = self.float_runner.run_batch(inputs)
                self.float_seconds += time.perf_counter() - started
                float_preds = {
                    pos: self._labels(output, f"{frame.name} (float)")
                    for pos, output, frame in zip(positions, outputs, frames, strict=True)
                }
                if self.keep_float:
                    collected += [float_preds[pos] for pos in positions]
            for key, runner in runners.items():
                started = time.perf_counter()
                outputs = runner.run_batch(inputs)
                scores[key].seconds += time.perf_counter() - started
                for pos, frame, mask, output in zip(positions, frames, masks, outputs, strict=True):
                    int8 = self._labels(output, f"{frame.name} ({runner.name})")
                    scores[key].tally.update(float_preds[pos], int8, mask, frame.name)
                    if pos in self.sample_positions:
                        scores[key].samples.append(
                            Sample(frame.name, _display_image(frame.image, self.info), mask,
                                   float_preds[pos], int8)
                        )
        if cached is None and self.keep_float:
            self._float_preds = collected
        return scores


@dataclass
class FrameScores:
    """The scores of one contiguous range ``[start, stop)`` of an evaluation's frames (one shard)."""

    start: int
    stop: int
    scores: dict[str, RunnerScore]
    float_seconds: float
    seconds: float


def merge_scores(parts: Sequence[FrameScores], count: int) -> tuple[dict[str, RunnerScore], float]:
    """Sum the scores of ranges that cover frames ``0..count`` exactly once; also the summed float seconds.

    Confusion matrices and pixel counts are integers, so the sum equals a single pass over all frames
    exactly; samples are concatenated in frame order, as one pass keeps them.
    """
    ordered = sorted(parts, key=lambda part: part.start)
    position = 0
    for part in ordered:
        if part.start != position or part.stop <= part.start:
            raise ValueError(
                f"frame ranges must cover 0..{count} once, in order; got {part.start}..{part.stop} "
                f"after {position}"
            )
        position = part.stop
    if position != count or not ordered:
        raise ValueError(f"frame ranges cover 0..{position}, not 0..{count}")
    keys = list(ordered[0].scores)
    if any(list(part.scores) != keys for part in ordered):
        raise ValueError("every range must be scored by the same runners")
    merged = {}
    for key in keys:
        pieces = [part.scores[key] for part in ordered]
        tally = pieces[0].tally
        for piece in pieces[1:]:
            tally = tally + piece.tally
        merged[key] = RunnerScore(
            pieces[0].runner,
            tally,
            [sample for piece in pieces for sample in piece.samples],
            sum(piece.seconds for piece in pieces),
        )
    return merged, sum(part.float_seconds for part in ordered)


def _display_image(image: np.ndarray, info: ModelInfo) -> np.ndarray:
    """The frame at the model's input size, resized exactly as preprocessing does, for the report."""
    from segcompile.data.preprocess import resize_image

    return resize_image(image, tuple(info.input_size))
