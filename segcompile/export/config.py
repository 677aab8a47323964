"""What the export stage is asked to do, as one small frozen value."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from segcompile.export.input_contract import InputContract

DEFAULT_OPSET = 18
MIN_OPSET = 17


@dataclass(frozen=True)
class ExportConfig:
    """Where the model comes from and how to export it.

    ``model`` is a zoo name, a ``.pt``/``.pth`` checkpoint (whose ``model_name`` key names the
    zoo entry) or an ``.onnx`` file. ``factory`` ("pkg.module:function") builds the network
    instead; ``model`` is then optional and only names it. ``checkpoint`` is a state dict for
    a zoo name or a factory. ``input_size`` is (width, height).
    """

    model: str | None = None
    checkpoint: str | None = None
    factory: str | None = None
    input_size: tuple[int, int] | None = None
    # The full input shape in the model's own layout, e.g. (1, 3, 512, 512) or (1, 512, 512, 3);
    # fixes the dynamic dimensions of an ONNX input (``input_size`` is its width and height).
    input_shape: tuple[int, int, int, int] | None = None
    num_classes: int | None = None
    # How pixels become the model's input and how its output becomes labels; None keeps what the
    # model (its metadata or zoo entry) says. See segcompile.export.input_contract.
    contract: InputContract = field(default_factory=lambda: InputContract())
    opset: int = DEFAULT_OPSET
    seed: int = 0
    # A real uint8 HxWx3 RGB image for the torch-vs-onnxruntime check (the lead passes the first
    # calibration frame); a deterministic synthetic one is used when it is None.
    sample_image: np.ndarray | None = field(default=None, compare=False, repr=False)
    sample_name: str | None = None
