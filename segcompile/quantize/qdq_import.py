"""QAT-aware import: read the ranges an already-quantized (QDQ) ONNX carries and strip it back to float.

Activation Q->DQ pairs are removed and their parameters recorded under the float tensor they quantized;
quantized constants (int8 initializer + DQ, or float initializer + Q + DQ) become float initializers holding
the dequantized values, with their scales recorded, so re-quantizing with those scales is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from segcompile.errors import SegcompileError
from segcompile.quantize.plan import constant_tensors, consumers_of
from segcompile.quantize.scheme import QParams, dequantize_array, quantize_array

_LINEAR = {"Conv", "ConvTranspose", "Add", "Sub", "Sum", "Gemm", "MatMul"}
_DTYPES = {np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8", np.dtype(np.int32): "int32"}


@dataclass
class ImportedRanges:
    """What an input QDQ graph said about its tensors."""

    activations: dict[str, QParams] = field(default_factory=dict)
    weights: dict[str, QParams] = field(default_factory=dict)
    # Constants that were int32 (biases): their values are kept as float, the writer recomputes int32.
    biases: list[str] = field(default_factory=list)
    # Linear outputs whose Q range started at exactly 0: the tool had fused a ReLU into the range
    # (onnxruntime's quantizer drops Relu/Clip nodes this way), so stripping restores an explicit Relu.
    restored_relus: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.activations or self.weights)


def has_qdq(model: onnx.ModelProto) -> bool:
    """True when the graph already contains QuantizeLinear/DequantizeLinear nodes."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def _qparams(node: onnx.NodeProto, consts: dict[str, np.ndarray], data_dtype=None) -> QParams:
    if node.input[1] not in consts:
        raise SegcompileError(
            f"node {node.name!r} ({node.op_type}): scale {node.input[1]!r} is not a constant"
        )
    scale = consts[node.input[1]].astype(np.float32)
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in consts:
            raise SegcompileError(f"node {node.name!r}: zero point {node.input[2]!r} is not a constant")
        zp = consts[node.input[2]]
    else:
        zp = np.zeros(scale.shape, data_dtype if data_dtype is not None else np.uint8)
    dtype = _DTYPES.get(zp.dtype)
    if dtype is None:
        raise SegcompileError(
            f"node {node.name!r}: unsupported quantized type {zp.dtype} (only int8, uint8, int32)"
        )
    axis = (
        next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1
        else None
    )
    return QParams(scale=scale, zero_point=zp, dtype=dtype, axis=axis)


def strip_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, ImportedRanges]:
    """Float copy of a QDQ ``model`` plus the ranges its Q/DQ nodes carried."""
    model_out = onnx.ModelProto()
    model_out.CopyFrom(model)
    graph = model_out.graph
    consts = constant_tensors(model_out)
    users = consumers_of(model_out)
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    ranges = ImportedRanges()
    rename: dict[str, str] = {}  # tensor name -> replacement in consumers
    drop: set[int] = set()
    new_consts: dict[str, np.ndarray] = {}
    relus: list[onnx.NodeProto] = []

    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        src = node.input[0]
        if src in consts:  # quantized constant: int8 weight or int32 bias
            qp = _qparams(node, consts, consts[src].dtype)
            value = dequantize_array(consts[src], qp)
            new_consts[node.output[0]] = value
            if qp.dtype == "int32":
                ranges.biases.append(node.output[0])
            else:
                ranges.weights[node.output[0]] = qp
            drop.add(id(node))
            continue
        q = producer.get(src)
        if q is None or q.op_type != "QuantizeLinear":
            raise SegcompileError(
                f"node {node.name!r}: DequantizeLinear of {src!r} not fed by QuantizeLinear or a constant; "
                "unsupported QDQ pattern"
            )
        qp = _qparams(q, consts)
        real = q.input[0]
        drop.add(id(node))
        drop.add(id(q))
        if real in consts:  # float weight fake-quantized in the graph (torch export before folding)
            new_consts[node.output[0]] = dequantize_array(quantize_array(consts[real], qp), qp)
            ranges.weights[node.output[0]] = qp
            continue
        producer_op = producer[real].op_type if real in producer else None
        if producer_op in _LINEAR and int(np.max(qp.zero_point)) == qp.qrange[0]:
            relu = onnx.helper.make_node("Relu", [real], [f"{real}_relu"], name=f"{real}_Relu")
            relus.append(relu)
            ranges.restored_relus.append(real)
            real = relu.output[0]
        ranges.activations[real] = qp
        rename[node.output[0]] = real

    for node in graph.node:
        if node.op_type == "QuantizeLinear" and id(node) not in drop:
            bad = [u.name for u in users.get(node.output[0], []) if u.op_type != "DequantizeLinear"]
            raise SegcompileError(
                f"node {node.name!r}: QuantizeLinear output feeds {bad or 'nothing'}; unsupported QDQ pattern"
            )

    # A DQ output that was a graph output: the float tensor takes the graph output's name instead.
    for dq_out, real in list(rename.items()):
        if dq_out in outputs:
            for node in [*graph.node, *relus]:
                for i, name in enumerate(node.output):
                    if name == real:
                        node.output[i] = dq_out
            for other, target in rename.items():
                if target == real:
                    rename[other] = dq_out
            ranges.activations[dq_out] = ranges.activations.pop(real)

    kept = []
    for node in graph.node:
        if id(node) in drop:
            continue
        kept.append(node)
        kept.extend(r for r in relus if r.input[0] in node.output)
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(kept)
    for name, value in new_consts.items():
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    _drop_unused_initializers(model_out)
    del graph.value_info[:]
    return model_out, ranges


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove initializers (and their graph-input entries, old-style models) that no node reads anymore."""
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    dropped = {init.name for init in model.graph.initializer if init.name not in used}
    kept = [init for init in model.graph.initializer if init.name not in dropped]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    inputs = [i for i in model.graph.input if i.name not in dropped]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
