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
    if current < 11:
        _keep_asymmetric_resize(model, upgraded)
    try:
        onnx.checker.check_model(upgraded)
    except onnx.checker.ValidationError as exc:
        raise SegcompileError(
            f"{source}: the opset {current} -> {target} upgrade produced an invalid model "
            f"({short_reason(exc)})"
        ) from exc
    return upgraded



def _keep_asymmetric_resize(original: onnx.ModelProto, upgraded: onnx.ModelProto) -> None:
    """Restore what Upsample and opset-10 Resize meant after the converter made them opset-11 Resize.

    Before opset 11 a resize mapped output pixel i to input i / scale ("asymmetric") and nearest
    took the floor. Opset 11 added ``coordinate_transformation_mode`` defaulting to half_pixel, and
    onnx's 10 -> 11 adapter leaves it unset, silently shifting every resized map by half a pixel
    (measured here: 0.32 max error on a bilinear x2). Nodes are matched by their output tensor,
    which the converter keeps.
    """
    resized = {node.output[0] for node in original.graph.node if node.op_type in ("Resize", "Upsample")}
    for node in upgraded.graph.node:
        if node.op_type != "Resize" or node.output[0] not in resized:
            continue
        attributes = {attribute.name for attribute in node.attribute}
        if "coordinate_transformation_mode" not in attributes:
            node.attribute.append(onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"))
        if "nearest_mode" not in attributes:
            node.attribute.append(onnx.helper.make_attribute("nearest_mode", "floor"))
