"""Turning frames into model inputs: the single place float and int8 runs get their tensors from.

The recipe (size, channel order, mean, std, layout) comes from the model's :class:`ModelInfo`, so the
ONNX float model, the QDQ model and the compiled integer module always see identical numbers.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from segcompile.errors import SegcompileError
from segcompile.modelinfo import ModelInfo


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 HxWx3 ``image`` to ``size`` (width, height): PIL bilinear, antialiased when shrinking."""
    width, height = size
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def preprocess(image: np.ndarray, info: ModelInfo) -> np.ndarray:
    """Model input for one RGB uint8 HxWx3 image: float32 (1,3,H,W) (or (1,H,W,3) for NHWC models).

    Resize to ``info.input_size`` (skipped when already that size), reorder channels to
    ``info.channel_order``, then ``(pixel - mean) / std`` per channel in that order.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise SegcompileError(f"preprocess: expected a uint8 HxWx3 RGB image, got {got}")
    if info.channel_order not in ("RGB", "BGR"):
        raise SegcompileError(
            f"model {info.name}: channel_order must be RGB or BGR, not {info.channel_order!r}"
        )
    if info.layout not in ("NCHW", "NHWC"):
        raise SegcompileError(f"model {info.name}: layout must be NCHW or NHWC, not {info.layout!r}")
    pixels = resize_image(image, info.input_size).astype(np.float32)
    if info.channel_order == "BGR":
        pixels = pixels[:, :, ::-1]
    mean = np.asarray(info.mean, dtype=np.float32)
    std = np.asarray(info.std, dtype=np.float32)
    pixels = (pixels - mean) / std
    if info.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels[None], dtype=np.float32)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 HxW class-id mask to ``size`` = (width, height), nearest neighbour (ids never blend)."""
    width, height = size
    if mask.shape == (height, width):
        return mask
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
