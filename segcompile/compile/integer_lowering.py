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

import numpy as np
import onnx
import tvm
from onnx import numpy_helper
from tvm import relax

from segcompile.compile.import_qdq import QdqModel, RelaxImport, import_to_relax
from segcompile.compile.passes import LoweringLog, LowerQdqToInteger
from segcompile.compile.passes.lower_qdq_to_integer import PadSpec
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


def _onnx_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                consts[node.output[0]] = numpy_helper.to_array(value)
    return consts


def _pad_spec(node: onnx.NodeProto, consts: dict[str, np.ndarray], rank: int) -> PadSpec | None:
    """Pads, mode and constant of an ONNX Pad node (any opset), or None when they are not constants."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if "pads" in attrs:  # opset < 11: attributes
        pads, value, axes = list(attrs["pads"]), float(attrs.get("value", 0.0)), None
    else:
        inputs = list(node.input) + [""] * (4 - len(node.input))
        if inputs[1] not in consts:
            return None
        pads = [int(p) for p in consts[inputs[1]].reshape(-1)]
        value = 0.0
        if inputs[2]:
            if inputs[2] not in consts:
                return None
            fill = consts[inputs[2]]
            value = float(fill.reshape(-1)[0]) if fill.size else 0.0
        axes = None
        if inputs[3]:
            if inputs[3] not in consts:
                return None
            axes = [int(a) % rank for a in consts[inputs[3]].reshape(-1)]
    axes = axes if axes is not None else list(range(len(pads) // 2))
    if len(pads) != 2 * len(axes):
        return None
    before, after = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        before[axis], after[axis] = pads[i], pads[len(axes) + i]
    return PadSpec(before=tuple(before), after=tuple(after), mode=mode, value=value)


def pad_specs(qdq_model: QdqModel, imported: RelaxImport) -> dict:
    """Imported Pad var -> :class:`PadSpec`, read from the ONNX nodes (TVM imports Pad as opaque TIR)."""
    by_name = {node.name or node.output[0]: node for node in qdq_model.model.graph.node}
    consts = _onnx_constants(qdq_model.model)
    specs = {}
    for var, ref in imported.node_of_var.items():
        node = by_name.get(ref.name)
        if ref.op_type != "Pad" or node is None:
            continue
        spec = _pad_spec(node, consts, len(var.ty.shape.values))
        if spec is not None:
            specs[var] = spec
    return specs


def lower_to_integer(qdq_model: QdqModel) -> tuple[tvm.IRModule, LoweringReport]:
    """Import ``qdq_model`` and lower it to an integer Relax module (params bound as constants).

    Returns the module (``main(input float32) -> float32 logits``) and a :class:`LoweringReport`.
    Raises :class:`SegcompileError` naming the node when TVM cannot import an operator.
    """
    imported = import_to_relax(qdq_model)
    log = LoweringLog()
    try:
        mod = LowerQdqToInteger(log, pad_specs(qdq_model, imported))(imported.mod)
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
