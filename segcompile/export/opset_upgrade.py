"""Bringing ONNX files from older exporters up to the opset the rest of the pipeline reads.

PaddlePaddle, tf2onnx and older PyTorch releases commonly write opsets 11-13, where Resize,
Pad, Clip, Split and the reductions take their parameters differently. onnx's own version
converter knows every one of those adapters, so it is used rather than our own rewrites.
"""

from __future__ import annotations

import onnx
from onnx import version_converter

from segcompile.errors import SegcompileError
from segcompile.export.messages import short_reason
from segcompile.export.onnx_export import opset_of

# The oldest opset the version converter is trusted for here: below 11, Upsample/Resize and
# BatchNormalization's training outputs change meaning in ways the adapters do not cover well.
OLDEST_UPGRADABLE_OPSET = 7


def upgrade_opset(model: onnx.ModelProto, target: int, source: str) -> onnx.ModelProto:
    """``model`` converted to default-domain opset ``target`` (unchanged when already there)."""
    current = opset_of(model)
    if current >= target:
        return model
    if current < OLDEST_UPGRADABLE_OPSET:
        raise SegcompileError(
            f"{source}: opset {current} is too old to upgrade reliably (oldest {OLDEST_UPGRADABLE_OPSET}); "
            "re-export the model at opset 11 or later"
        )
    try:
        upgraded = version_converter.convert_version(model, target)
    except Exception as exc:  # the converter raises RuntimeError/ValueError carrying the adapter's message
        raise SegcompileError(
            f"{source}: cannot upgrade opset {current} to {target} with onnx's version converter "
            f"({short_reason(exc)})"
        ) from exc
    try:
        onnx.checker.check_model(upgraded)
    except onnx.checker.ValidationError as exc:
        raise SegcompileError(
            f"{source}: the opset {current} -> {target} upgrade produced an invalid model "
            f"({short_reason(exc)})"
        ) from exc
    return upgraded

