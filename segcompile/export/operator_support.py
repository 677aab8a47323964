"""Refusing, with one line naming the node, an ONNX graph that holds an operator we cannot run.

Without this check an unknown operator surfaces much later as an onnxsim/onnxruntime failure or a
TVM importer traceback that names neither the node nor the operator. TVM's ONNX importer is the
part that must understand every node, so its converter table is the list of what is runnable.
"""

from __future__ import annotations

import onnx

from segcompile.errors import SegcompileError

# Nodes the importer handles itself rather than through the converter table.
_IMPORTER_BUILTINS = {"Constant"}
_DEFAULT_DOMAINS = ("", "ai.onnx")


def importable_operators() -> frozenset[str] | None:
    """Operator types TVM's ONNX importer converts, or None when the table cannot be read.

    ``_get_convert_map`` is private to TVM; if a TVM release renames it the check is skipped
    (the importer still fails later, only less clearly) rather than rejecting every model.
    """
    try:
        from tvm.relax.frontend.onnx import onnx_frontend

        return frozenset(onnx_frontend._get_convert_map()) | _IMPORTER_BUILTINS
    except (ImportError, AttributeError):
        return None


def check_operators(model: onnx.ModelProto, source: str) -> None:
    """Raise for the first node whose operator is custom, unknown to ONNX or not importable by TVM."""
    known = importable_operators()
    for node in model.graph.node:
        name = node.name or f"#{list(model.graph.node).index(node)}"
        if node.domain not in _DEFAULT_DOMAINS:
            raise SegcompileError(
                f"{source}: node {name!r} uses the custom operator {node.domain}::{node.op_type}, "
                "which neither onnxruntime's standard set nor TVM implements; "
                "export it with standard ONNX ops"
            )
        if not onnx.defs.has(node.op_type):
            raise SegcompileError(
                f"{source}: node {name!r} has operator {node.op_type!r}, which is not an ONNX operator"
            )
        if known is not None and node.op_type not in known:
            raise SegcompileError(
                f"{source}: node {name!r} uses {node.op_type}, an operator TVM's ONNX importer does not "
                "support; replace it in the model (or export the network without it)"
            )
