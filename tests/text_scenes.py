"""Rendered text scenes with exact text-box masks, for text-detection models (not a test module itself).

Words in Pillow's built-in scalable font on smooth random backgrounds; the mask marks each word's
bounding box (class 1, "text"). Deterministic for a given index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = (
    "segment compile board int8 float tensor kernel camera road lane sign stop speed limit exit north city "
    "park 42 2026 AM62A TDA4VM"
).split()


def render_text_scene(index: int, size: tuple[int, int] = (160, 128)) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 image and its 0/1 text mask."""
    rng = np.random.default_rng(1000 + index)
    width, height = size
    gradient = np.linspace(0.0, 1.0, width)[None, :, None] * rng.integers(-60, 60, 3)
    background = rng.integers(120, 256, 3) + gradient + rng.normal(0.0, 6.0, (height, width, 3))
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    mask = Image.new("L", size, 0)
    draw, mask_draw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(1, 4))):
        font = ImageFont.load_default(size=int(rng.integers(14, 26)))
        text = " ".join(rng.choice(WORDS, int(rng.integers(1, 3))))
        x, y = int(rng.integers(0, width // 2)), int(rng.integers(0, height - 24))
        draw.text((x, y), text, fill=tuple(int(c) for c in rng.integers(0, 80, 3)), font=font)
        mask_draw.rectangle(draw.textbbox((x, y), text, font=font), fill=1)
    return np.asarray(image), np.asarray(mask)


def write_text_scenes(root: Path, count: int) -> tuple[str, str]:
    """Write ``count`` scenes under ``root``; return the (calibration, evaluation) data specs."""
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(exist_ok=True)
    for index in range(count):
        image, mask = render_text_scene(index)
        Image.fromarray(image).save(images / f"text{index:03d}.png")
        Image.fromarray(mask).save(masks / f"text{index:03d}.png")
    (root / "dataset.yaml").write_text("classes: [background, text]\n")
    return f"folder:{images}", f"folder:{images}:{masks}"
