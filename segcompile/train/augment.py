"""Batch augmentation on uint8 image tensors and label maps, all in torch.

Images and labels go through the same random geometric transform (labels with nearest
sampling so class ids survive); photometric changes touch images only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms applied to each training sample."""

    hflip: bool = True
    scale_range: tuple[float, float] = (0.75, 1.5)
    brightness: float = 0.25
    contrast: float = 0.25


# "strong" suits training from scratch; "light" suits fine-tuning, where heavy zoom slows convergence.
AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "strong": AugmentConfig(),
    "light": AugmentConfig(scale_range=(0.9, 1.25), brightness=0.15, contrast=0.15),
    "none": AugmentConfig(hflip=False, scale_range=(1.0, 1.0), brightness=0.0, contrast=0.0),
}


def augment_batch(
    images: torch.Tensor, labels: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly flip, zoom/shift and recolour a batch.

    ``images``: float N x 3 x H x W in 0..255; ``labels``: int64 N x H x W (255 = ignore).
    Returns tensors of the same shapes; pixels that come from outside the frame are ignored.
    """
    n = images.shape[0]
    low, high = config.scale_range
    scale = low + (high - low) * torch.rand(n, generator=generator)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if config.hflip else torch.ones(n)
    # Shift within the room the zoom leaves, so a zoomed-in crop stays inside the frame.
    room = (1.0 - 1.0 / scale).clamp(min=0.0)
    shift_x = (2 * torch.rand(n, generator=generator) - 1) * room
    shift_y = (2 * torch.rand(n, generator=generator) - 1) * room

    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = flip / scale
    theta[:, 1, 1] = 1.0 / scale
    theta[:, 0, 2] = shift_x
    theta[:, 1, 2] = shift_y
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)

    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # Labels: nearest sampling; outside-of-frame pixels become 255 (ignore) via a shifted trick.
    shifted = (labels.float() + 1.0).unsqueeze(1)
    sampled = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    labels = sampled.squeeze(1).long() - 1
    labels[labels < 0] = 255

    gain = 1.0 + (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1) * config.contrast
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    bias = (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1) * config.brightness * 255.0
    images = ((images - mean) * gain + mean + bias).clamp(0.0, 255.0)
    return images, labels
