"""Resize nodes from older exporters, rewritten into the one form every importer reads.

PyTorch 1.x and tf2onnx at opsets 10-13 write ``Resize(x, roi, scales, sizes)`` with constant
tensors standing in for inputs that do not apply: an empty ``scales`` when ``sizes`` is given, and a
``roi`` that the spec ignores unless the mode is ``tf_crop_and_resize`` (onnx's version converter
fills one in too). ONNX also allows leaving optional inputs out by name (``""``), and TVM's
importer only understands that form: it reads an empty ``scales`` as "scales given" (and refuses
the node when ``sizes`` is given too) and carries any ``roi`` into the resize attributes.
"""

from __future__ import annotations

import numpy as np
import onnx

from segcompile.quantize.plan import constant_tensors

_ROI, _SCALES = 1, 2


def omit_unused_resize_inputs(model: onnx.ModelProto) -> int:
    """Replace ignored ``roi`` and empty ``scales`` inputs of every Resize by ``""``; return how many."""
    constants = constant_tensors(model)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        mode = next(
            (a.s.decode() for a in node.attribute if a.name == "coordinate_transformation_mode"), "half_pixel"
        )
        if len(node.input) > _ROI and node.input[_ROI] and mode != "tf_crop_and_resize":
            node.input[_ROI] = ""
            changed += 1
        scales = node.input[_SCALES] if len(node.input) > _SCALES else ""
        if scales in constants and np.asarray(constants[scales]).size == 0 and len(node.input) > 3:
            node.input[_SCALES] = ""
            changed += 1
    if changed:
        _drop_unused_constants(model)
    return changed


def _drop_unused_constants(model: onnx.ModelProto) -> None:
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
    kept_nodes = [n for n in graph.node if n.op_type != "Constant" or any(o in used for o in n.output)]
    kept_tensors = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept_tensors)
