"""Resize nodes from older exporters, rewritten into the one form every importer reads.

PyTorch 1.x and tf2onnx at opsets 11-13 write ``Resize(x, roi, scales, sizes)`` with empty
*constant tensors* standing in for the unused ``roi`` and ``scales``. ONNX also allows leaving
optional inputs out by name (``""``), and TVM's importer only understands that form: it reads an
empty ``scales`` tensor as "scales given" and refuses the node when ``sizes`` is given too.
"""

from __future__ import annotations

import numpy as np
import onnx

from segcompile.quantize.plan import constant_tensors

_OPTIONAL_INPUTS = (1, 2)  # roi, scales


def omit_empty_resize_inputs(model: onnx.ModelProto) -> int:
    """Replace empty constant ``roi``/``scales`` inputs of every Resize by ``""``; return how many."""
    constants = constant_tensors(model)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        for position in _OPTIONAL_INPUTS:
            if position < len(node.input) and node.input[position] in constants:
                if np.asarray(constants[node.input[position]]).size == 0:
                    node.input[position] = ""
                    changed += 1
    if changed:
        _drop_unused_initializers(model)
    return changed


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    kept = [tensor for tensor in model.graph.initializer if tensor.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
