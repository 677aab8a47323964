"""Writing the int8 QDQ ONNX graph from a float graph, a plan and chosen parameters.

Our own writer with onnx.helper rather than onnxruntime's quantize_static: the compile stage's integer
kernels need exactly power-of-2 scales where the scheme says, int32 biases at s_in*s_w computed from the
scales we chose (after bias correction), per-channel axes matching the weight layout, and ReLU/Clip folded
into the conv's output range. quantize_static recomputes or adjusts some of those (bias scale, ranges of
data-movement ops, activation fusion rules) in ways that change between versions; here every number in
the graph is one we chose and recorded in quant_params.json.

Naming: the quantized activation keeps its float-graph name as the DequantizeLinear output, so the float
and int8 graphs can be compared tensor by tensor; the producer's float output becomes ``<name>_float``.
Graph inputs keep their name and feed ``<name>_dequantized``.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper, numpy_helper

from segcompile.errors import SegcompileError
from segcompile.quantize.plan import QuantPlan
from segcompile.quantize.scheme import QParams, QuantScheme

QUANT_METADATA_KEY = "segcompile_quantization"


def qdq_tensor_name(model: onnx.ModelProto, tensor: str) -> str:
    """Name of the dequantized value of ``tensor`` in the written QDQ graph."""
    return f"{tensor}_dequantized" if tensor in {i.name for i in model.graph.input} else tensor


def _param_initializers(prefix: str, qp: QParams) -> list[onnx.TensorProto]:
    np_dtype = {"int8": np.int8, "uint8": np.uint8, "int32": np.int32}[qp.dtype]
    return [
        numpy_helper.from_array(np.asarray(qp.scale, np.float32), f"{prefix}_scale"),
        numpy_helper.from_array(np.asarray(qp.zero_point, np_dtype), f"{prefix}_zero_point"),
    ]


def _dq_node(prefix: str, source: str, output: str, qp: QParams) -> onnx.NodeProto:
    kwargs = {"axis": qp.axis} if qp.axis is not None and np.ndim(qp.scale) == 1 else {}
    return helper.make_node(
        "DequantizeLinear",
        [source, f"{prefix}_scale", f"{prefix}_zero_point"],
        [output],
        name=f"{prefix}_DequantizeLinear",
        **kwargs,
    )


def write_qdq(
    model: onnx.ModelProto,
    plan: QuantPlan,
    activations: dict[str, QParams],
    weights: dict[str, tuple[QParams, np.ndarray]],
    biases: dict[str, tuple[QParams, np.ndarray]],
    scheme: QuantScheme,
) -> onnx.ModelProto:
    """QDQ copy of float ``model``: activations Q->DQ, int8 weights and int32 biases behind DequantizeLinear.

    ``weights``/``biases`` map initializer names to (parameters, integer values); ``activations`` must hold
    every tensor of ``plan.activations``.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise SegcompileError(
            f"model opset {opset} < 13: per-channel DequantizeLinear needs opset 13 or newer"
        )
    missing = [t for t in plan.activations if t not in activations]
    if missing:
        raise SegcompileError(f"no quantization parameters for tensor(s) {', '.join(missing[:5])}")

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    graph_inputs = {i.name for i in graph.input}
    replaced = set(weights) | set(biases)
    inits = [init for init in graph.initializer if init.name not in replaced]
    head: list[onnx.NodeProto] = []

    for name, (qp, values) in [*weights.items(), *biases.items()]:
        inits.append(numpy_helper.from_array(values, f"{name}_quantized"))
        inits.extend(_param_initializers(name, qp))
        head.append(_dq_node(name, f"{name}_quantized", name, qp))

    def qdq_pair(tensor: str, source: str, output: str) -> list[onnx.NodeProto]:
        qp = activations[tensor]
        inits.extend(_param_initializers(tensor, qp))
        return [
            helper.make_node(
                "QuantizeLinear",
                [source, f"{tensor}_scale", f"{tensor}_zero_point"],
                [f"{tensor}_quantized"],
                name=f"{tensor}_QuantizeLinear",
            ),
            _dq_node(tensor, f"{tensor}_quantized", output, qp),
        ]

    nodes = list(head)
    rewire: dict[str, str] = {}
    for inp in graph.input:
        if inp.name in plan.activations:
            nodes.extend(qdq_pair(inp.name, inp.name, f"{inp.name}_dequantized"))
            rewire[inp.name] = f"{inp.name}_dequantized"
    for node in graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for i, name in enumerate(new.input):
            if name in rewire:
                new.input[i] = rewire[name]
        extra: list[onnx.NodeProto] = []
        for i, name in enumerate(new.output):
            if name in plan.activations and name not in graph_inputs:
                new.output[i] = f"{name}_float"
                extra.extend(qdq_pair(name, f"{name}_float", name))
        nodes.append(new)
        nodes.extend(extra)

    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.value_info[:]
    kept_meta = [p for p in out.metadata_props if p.key != QUANT_METADATA_KEY]
    del out.metadata_props[:]
    out.metadata_props.extend(kept_meta)
    out.metadata_props.add(key=QUANT_METADATA_KEY, value=json.dumps(scheme.to_dict(), sort_keys=True))
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as exc:
        raise SegcompileError(f"written QDQ graph is invalid: {exc}") from exc
    return out
