"""Meaningful, unique, deterministic node and tensor names for an exported graph.

The dynamo exporter names nodes after counters (``node_Conv_43``, ``n4_2``) that say nothing
about the network and can change between exports in one process. It does record, per node,
the torch module path it came from (node metadata ``pkg.torch.onnx.name_scopes``); we turn that
into names like ``backbone.features.3.conv.0/Conv`` so per-layer reports (quantization error,
fallbacks) point at layers the user recognises. Tensors are then named after the node that
produces them (``<node>_output_<i>``, the legacy exporter's convention).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping

import onnx

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
# Ops whose second input is the layer's weight: after BatchNorm folding their name scope points at
# the BatchNorm module, while the weight initializer still carries the conv's own parameter name.
_WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def name_nodes_from_torch_scopes(graph: onnx.GraphProto) -> int:
    """Rename every node ``<module path>/<OpType>`` from the exporter's metadata; return how many.

    Nodes without the metadata keep their name. Call :func:`make_node_names_unique` afterwards.
    """
    initializers = {tensor.name for tensor in graph.initializer}
    renamed = 0
    for node in graph.node:
        path = _weight_module_path(node, initializers)
        if path is None:
            path = _scope_module_path(node)
        if path is None:
            continue
        node.name = f"{path}/{node.op_type}" if path else node.op_type
        renamed += 1
    return renamed


def make_node_names_unique(graph: onnx.GraphProto) -> None:
    """Give unnamed nodes their op type as name and suffix repeats ``_1``, ``_2``... in graph order."""
    original = {node.name for node in graph.node if node.name}
    used: set[str] = set()
    counters: dict[str, int] = {}
    for node in graph.node:
        base = node.name or node.op_type
        name = base
        # A suffixed name must not steal a name that a later node already carries.
        while name in used or (name != base and name in original):
            counters[base] = counters.get(base, 0) + 1
            name = f"{base}_{counters[base]}"
        used.add(name)
        node.name = name


def name_tensors_after_nodes(graph: onnx.GraphProto) -> None:
    """Rename each node output ``<node name>_output_<i>``; graph inputs/outputs keep their names.

    Graphs with subgraphs (If/Loop) are left alone: their inner nodes may refer to outer tensors
    by name, and rewriting those scopes correctly is not worth it for segmentation networks.
    """
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in graph.node for attr in node.attribute):
        return
    fixed = {value.name for value in graph.input} | {value.name for value in graph.output}
    fixed |= {tensor.name for tensor in graph.initializer}
    mapping: dict[str, str] = {}
    for node in graph.node:
        for index, output in enumerate(node.output):
            if output and output not in fixed:
                mapping[output] = f"{node.name}_output_{index}"
    rename_values(graph, mapping)


def rename_values(graph: onnx.GraphProto, mapping: Mapping[str, str]) -> None:
    """Rename tensors everywhere they appear in ``graph`` (nodes, inputs, outputs, value_info)."""
    if not mapping:
        return
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in mapping:
                node.input[index] = mapping[name]
        for index, name in enumerate(node.output):
            if name in mapping:
                node.output[index] = mapping[name]
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name in mapping:
            value.name = mapping[value.name]
    for tensor in graph.initializer:
        if tensor.name in mapping:
            tensor.name = mapping[tensor.name]


def strip_node_metadata(graph: onnx.GraphProto) -> None:
    """Drop per-node metadata and doc strings.

    They hold stack traces with absolute source paths, which would make the file depend on where
    the code lives (breaking byte-identical exports) and leak local paths into shipped artifacts.
    """
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def _weight_module_path(node: onnx.NodeProto, initializers: set[str]) -> str | None:
    if node.op_type not in _WEIGHTED_OPS or len(node.input) < 2:
        return None
    weight = node.input[1]
    if weight in initializers and weight.endswith(".weight"):
        return weight[: -len(".weight")]
    return None


def _scope_module_path(node: onnx.NodeProto) -> str | None:
    for prop in node.metadata_props:
        if prop.key != NAME_SCOPES_KEY:
            continue
        try:
            # The exporter writes a Python list literal; literal_eval parses it without executing anything.
            scopes = ast.literal_eval(prop.value)
        except (ValueError, SyntaxError):
            return None
        if not isinstance(scopes, list) or not all(isinstance(scope, str) for scope in scopes):
            return None
        # Scopes are cumulative module paths ending with the aten op: ['', 'head', 'head.conv', 'conv2d_4'].
        modules = [scope for scope in scopes[:-1] if scope]
        return modules[-1] if modules else ""
    return None
