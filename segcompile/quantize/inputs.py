"""Calibration inputs from a dataset spec: frames in order, preprocessed exactly as the model expects."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from segcompile.data.preprocess import preprocess
from segcompile.data.spec import open_dataset
from segcompile.errors import SegcompileError
from segcompile.modelinfo import ModelInfo


def calibration_inputs(spec: str, info: ModelInfo, frames: int) -> tuple[int, Iterator[np.ndarray]]:
    """(number of frames that will be read, generator of preprocessed 1x3xHxW float32 inputs).

    Frames are taken in dataset order, at most ``frames``; each is read and preprocessed only when the
    calibration asks for it, so nothing is held in memory.
    """
    dataset = open_dataset(spec, role="calib")
    count = min(frames, len(dataset))
    if count == 0:
        raise SegcompileError(f"--calib {spec}: the dataset has no frames")

    def generate() -> Iterator[np.ndarray]:
        for index in range(count):
            yield preprocess(dataset[index].image, info)

    return count, generate()
