"""Saving checkpoints as plain dictionaries of tensors and JSON-like values.

They are saved so that ``torch.load(..., weights_only=True)`` reads them: no pickled
classes, nothing that executes on load. Reading them is the export stage's job
(:func:`segcompile.export.source.load_checkpoint`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from segcompile.artifacts import write_bytes_atomic

CHECKPOINT_FORMAT = "segcompile-checkpoint-1"


def save_checkpoint(
    path: Path | str, model: torch.nn.Module, model_name: str, num_classes: int, metadata: dict[str, Any]
) -> Path:
    """Write ``model``'s weights (float32, contiguous) with its zoo name, atomically."""
    state = {key: value.detach().contiguous().clone() for key, value in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_name": model_name,
        "num_classes": num_classes,
        "state_dict": state,
        "metadata": metadata,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_bytes_atomic(path, buffer.getvalue())
