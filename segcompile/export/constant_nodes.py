"""Constant nodes turned into initializers, the one form of constant the later stages read.

paddle2onnx and tf2onnx write weights and biases as ``Constant`` nodes; onnxsim leaves some in
place. Quantization rewrites a Conv's bias (int32 at s_in*s_w) as an initializer of the same name,
which would then be produced twice; TVM's importer and onnxruntime treat both forms alike, so
moving them up front changes nothing else.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper


def constant_nodes_to_initializers(model: onnx.ModelProto) -> int:
    """Move every tensor-valued ``Constant`` node of the main graph into its initializers; return how many."""
    graph = model.graph
    kept, moved = [], []
    for node in graph.node:
        value = node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 else None
        if value is not None and value.name == "value" and node.domain in ("", "ai.onnx"):
            tensor = numpy_helper.from_array(numpy_helper.to_array(value.t), node.output[0])
            moved.append(tensor)
        else:
            kept.append(node)
    if moved:
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(moved)
    return len(moved)
