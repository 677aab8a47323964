"""QDQ ONNX -> integer Relax module, and the report of what became integer.

Pipeline: TVM's ONNX import (simulated quantization, int8 weights still behind ``dequantize``)
-> :class:`~segcompile.compile.passes.LowerQdqToInteger` (before any constant folding)
-> DeadCodeElimination (drops the float ops the integer code replaced) -> FoldConstant.

The resulting ``main(input: float32 1x3xHxW) -> float32`` quantizes the input once at the
entrance (``relax.quantize``), runs int8/int32 arithmetic in between, and dequantizes the output
at the exit. Operators that cannot be lowered keep their float path and are listed by ONNX node
name in the :class:`LoweringReport`.

Rounding of the entrance ``quantize`` is TVM's (ties away from zero) while onnxruntime rounds ties
to even; a float image input lands exactly on a tie only by accident, so this is not worth a custom
kernel. Everything after the entrance rounds ties to even, like onnxruntime.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import tvm
from tvm import relax

from segcompile.compile.import_qdq import QdqModel, import_to_relax
from segcompile.compile.passes import LoweringLog, LowerQdqToInteger
from segcompile.errors import SegcompileError

# Reason given for a float node that never sat directly under a QuantizeLinear.
NOT_QUANTIZED = "its output is not quantized (no QuantizeLinear after it): part of a float region"


@dataclass(frozen=True)
class FloatNode:
    """An ONNX node that stayed float in the compiled module, and why."""

    name: str
    op_type: str
    reason: str


@dataclass(frozen=True)
class LoweringReport:
    """Which ONNX compute nodes became integer code and which stayed float (by name, with reasons)."""

    integer_nodes: tuple[tuple[str, str], ...] = ()  # (node name, op type)
    float_nodes: tuple[FloatNode, ...] = ()
    constant_bytes: dict[str, int] = field(default_factory=dict)  # dtype -> bytes of constants in main

    @property
    def integer_count(self) -> int:
        return len(self.integer_nodes)

    @property
    def float_count(self) -> int:
        return len(self.float_nodes)

    def counts_by_op_type(self) -> dict[str, dict[str, int]]:
        """``{op_type: {"integer": n, "float": m}}`` over all compute nodes."""
        integer = Counter(op for _, op in self.integer_nodes)
        floating = Counter(node.op_type for node in self.float_nodes)
        return {op: {"integer": integer[op], "float": floating[op]} for op in sorted(integer | floating)}

    def all_integer(self, op_type: str) -> bool:
        """True when every node of ``op_type`` became integer (and there is at least one)."""
        counts = self.counts_by_op_type().get(op_type)
        return bool(counts) and counts["float"] == 0

    def summary(self) -> str:
        """One line for the console, e.g. ``62 of 63 ops integer; float: node_sigmoid (Sigmoid)``."""
        total = self.integer_count + self.float_count
        floats = ", ".join(f"{node.name} ({node.op_type})" for node in self.float_nodes) or "none"
        return f"{self.integer_count} of {total} ops integer; float: {floats}"

    def to_dict(self) -> dict:
        """A JSON-ready summary (for compile.json and the report)."""
        return {
            "integer_ops": self.integer_count,
            "float_ops": self.float_count,
            "by_op_type": self.counts_by_op_type(),
            "float_nodes": [
                {"name": node.name, "op_type": node.op_type, "reason": node.reason}
                for node in self.float_nodes
            ],
            "constant_bytes_by_dtype": dict(sorted(self.constant_bytes.items())),
        }


def constant_bytes_by_dtype(mod: tvm.IRModule) -> dict[str, int]:
    """Bytes of tensor constants in the module's Relax functions, grouped by dtype."""
    totals: Counter = Counter()
    seen: set = set()

    def visit(expr) -> None:
        if isinstance(expr, tvm.ir.GenericConst) and expr not in seen:
            seen.add(expr)
            array = expr.value.numpy()
            totals[str(array.dtype)] += int(array.nbytes)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return dict(totals)


def lower_to_integer(qdq_model: QdqModel) -> tuple[tvm.IRModule, LoweringReport]:
    """Import ``qdq_model`` and lower it to an integer Relax module (params bound as constants).

    Returns the module (``main(input float32) -> float32 logits``) and a :class:`LoweringReport`.
    Raises :class:`SegcompileError` naming the node when TVM cannot import an operator.
    """
    imported = import_to_relax(qdq_model)
    log = LoweringLog()
    try:
        mod = LowerQdqToInteger(log)(imported.mod)
        mod = relax.transform.DeadCodeElimination()(mod)
        mod = relax.transform.FoldConstant()(mod)
        mod = relax.transform.DeadCodeElimination()(mod)
    except Exception as exc:  # TVM raises many error types; a failure here is a lowering bug
        raise SegcompileError(f"{qdq_model.path}: integer lowering failed: {exc}") from exc

    integer_nodes, float_nodes = [], []
    for var, ref in imported.node_of_var.items():
        if var in log.lowered:
            integer_nodes.append((ref.name, ref.op_type))
        else:
            float_nodes.append(FloatNode(ref.name, ref.op_type, log.failures.get(var, NOT_QUANTIZED)))
    report = LoweringReport(
        integer_nodes=tuple(integer_nodes),
        float_nodes=tuple(float_nodes),
        constant_bytes=constant_bytes_by_dtype(mod),
    )
    return mod, report
