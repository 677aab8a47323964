"""The quantized layers of a QDQ graph, and turning chosen layers back to float.

A *layer* is a compute node of the QDQ graph (Conv, MatMul, Add, ...) together with the
quantization it owns: the DequantizeLinear of its constant inputs (weights, bias) and the
QuantizeLinear/DequantizeLinear pair on its output — found by following single-consumer
activation nodes (Relu, Clip) that the quantize stage folds into the conv's output range.
The model-input Q/DQ pair belongs to the pseudo-layer ``INPUT_LAYER``.

Written directly on the ONNX graph because neither onnxruntime nor onnx offers "dequantize this
node back to float" on an existing QDQ model, and the fallback must work on whatever QDQ file the
quantize stage wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from segcompile.errors import SegcompileError

INPUT_LAYER = "<input>"
_FOLDED_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid"}
_QDQ = {"QuantizeLinear", "DequantizeLinear"}


@dataclass(frozen=True)
class QuantLayer:
    """One quantized layer of a QDQ graph."""

    node: str  # node name (the compute node)
    op_type: str
    output: str  # the activation tensor that is quantized (input of its QuantizeLinear), "" if none
    constant_inputs: tuple[int, ...]  # input positions fed by DequantizeLinear of an initializer
    macs: int
    # Names the quantized activation goes by: the QuantizeLinear input and the DequantizeLinear
    # outputs (quantizers differ on which one keeps the original tensor name).
    aliases: tuple[str, ...] = ()


class QdqGraph:
    """Index of a QDQ model: producers, consumers, initializers and the layers."""

    def __init__(
        self, model: onnx.ModelProto, source: str = "int8.qdq.onnx", with_costs: bool = True
    ) -> None:
        self.model = model
        self.source = source
        graph = model.graph
        self.initializers = {init.name: init for init in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {o.name for o in graph.output}
        # MACs need onnx shape inference; graph surgery (strip_quantization) does not need them.
        self.macs = _node_macs(model) if with_costs else {}
        self.layers = self._find_layers()

    def _constant_dq(self, tensor: str) -> onnx.NodeProto | None:
        node = self.producer.get(tensor)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in self.initializers:
            return node
        return None

    def quantize_node_of(self, tensor: str) -> onnx.NodeProto | None:
        """The QuantizeLinear reading ``tensor`` (the activation's quantization), if any."""
        for node in self.consumers.get(tensor, []):
            if node.op_type == "QuantizeLinear":
                return node
        return None

    def _quantized_output(self, node: onnx.NodeProto) -> str:
        tensor = node.output[0]
        seen = 0
        while seen < 4:  # conv -> relu -> clip chains are short; bound the walk
            if self.quantize_node_of(tensor) is not None:
                return tensor
            nexts = self.consumers.get(tensor, [])
            if len(nexts) != 1 or nexts[0].op_type not in _FOLDED_ACTIVATIONS:
                return ""
            if self._has_own_quantization(nexts[0]):
                return ""
            tensor = nexts[0].output[0]
            seen += 1
        return ""

    def _has_own_quantization(self, node: onnx.NodeProto) -> bool:
        return any(self._constant_dq(t) is not None for t in node.input)

    def _find_layers(self) -> list[QuantLayer]:
        folded: set[str] = set()
        layers: list[QuantLayer] = []
        for node in self.model.graph.node:
            if node.op_type in _QDQ or node.name in folded:
                continue
            constants = tuple(i for i, t in enumerate(node.input) if t and self._constant_dq(t) is not None)
            output = self._quantized_output(node)
            if not constants and not output:
                continue
            if output and output != node.output[0]:
                tensor = node.output[0]
                while tensor != output:  # mark the folded activations so they are not layers themselves
                    nxt = self.consumers[tensor][0]
                    folded.add(nxt.name)
                    tensor = nxt.output[0]
            if not node.name:
                raise SegcompileError(f"{self.source}: a {node.op_type} node has no name; cannot name layers")
            layers.append(QuantLayer(node.name, node.op_type, output, constants, self.macs.get(node.name, 0),
                                     self._aliases(output)))
        return layers

    def _aliases(self, tensor: str) -> tuple[str, ...]:
        if not tensor:
            return ()
        quant = self.quantize_node_of(tensor)
        readers = self.consumers.get(quant.output[0], [])
        return (tensor, *[n.output[0] for n in readers if n.op_type == "DequantizeLinear"])

    def layer(self, name: str) -> QuantLayer:
        for layer in self.layers:
            if layer.node == name:
                return layer
        raise SegcompileError(f"{self.source}: no quantized layer named {name!r}")

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())


def strip_quantization(
    qdq: onnx.ModelProto,
    float_models: onnx.ModelProto | Sequence[onnx.ModelProto],
    layers: Iterable[str],
    source: str = "int8.qdq.onnx",
    notes: list[str] | None = None,
) -> onnx.ModelProto:
    """A copy of ``qdq`` where the named layers compute in float.

    Their constant inputs take float values from the first of ``float_models`` whose weights agree
    with the quantized ones to half a quantization step (the node of the same name, same input
    position): float.onnx itself, or a copy transformed the way the quantizer did (cross-layer
    equalization rescales weights, so plain float.onnx values would not fit the neighbours). If none
    agrees, the dequantized int8 values are kept (noted in ``notes``). The Q/DQ pair on a layer's
    output becomes an Identity; the neighbours keep their own int8 quantization. ``INPUT_LAYER``
    removes the model-input Q/DQ.
    """
    if isinstance(float_models, onnx.ModelProto):
        float_models = [float_models]
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    index = QdqGraph(model, source, with_costs=False)
    twins = [
        ({n.name: n for n in m.graph.node if n.name}, {i.name: i for i in m.graph.initializer})
        for m in float_models
    ]
    nodes = {n.name: n for n in model.graph.node}
    new_inits: list[onnx.TensorProto] = []
    outputs_to_free: list[str] = []
    for name in layers:
        if name == INPUT_LAYER:
            outputs_to_free += [i.name for i in model.graph.input if index.quantize_node_of(i.name)]
            continue
        layer = index.layer(name)
        node = nodes[name]
        values = _float_constants(node, layer.constant_inputs, twins, index)
        if values is None:
            values = {pos: _dequantize(index, node.input[pos]) for pos in layer.constant_inputs}
            if notes is not None and layer.constant_inputs:
                notes.append(f"{name}: no float weights match the quantized ones; kept int8-rounded values")
        for position, value in values.items():
            fresh = f"{node.input[position]}__float"
            new_inits.append(numpy_helper.from_array(value.astype(np.float32), fresh))
            node.input[position] = fresh
        if layer.output:
            outputs_to_free.append(layer.output)
    for tensor in outputs_to_free:
        _bypass_qdq(model, index, tensor)
    model.graph.initializer.extend(new_inits)
    _prune(model)
    return model


def _dequantize(index: QdqGraph, tensor: str) -> np.ndarray:
    """The float value a DequantizeLinear of an initializer produces: (q - zero_point) * scale."""
    node = index.producer[tensor]
    q = numpy_helper.to_array(index.initializers[node.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(index.initializers[node.input[1]]).astype(np.float64)
    zero = (numpy_helper.to_array(index.initializers[node.input[2]]).astype(np.float64)
            if len(node.input) > 2 and node.input[2] else np.zeros_like(scale))
    if scale.ndim == 1 and q.ndim > 1:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        shape[axis % q.ndim] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero) * scale


def _float_constants(
    node: onnx.NodeProto,
    positions: tuple[int, ...],
    twins: list[tuple[dict[str, onnx.NodeProto], dict[str, onnx.TensorProto]]],
    index: QdqGraph,
) -> dict[int, np.ndarray] | None:
    """Float values of a node's quantized constants from the first twin model that fits, else None.

    A twin fits when each of its constants that has a quantized counterpart with a per-element step
    (weights) lies within half a step (+1e-6 relative) of the dequantized value.
    """
    for float_nodes, float_inits in twins:
        twin = float_nodes.get(node.name)
        if twin is None:
            continue
        values: dict[int, np.ndarray] = {}
        for position in positions:
            if position < len(twin.input) and twin.input[position] in float_inits:
                values[position] = numpy_helper.to_array(float_inits[twin.input[position]])
            elif position >= len(twin.input) or not twin.input[position]:
                # An optional input (a conv bias) the quantizer added, e.g. for bias correction: in the
                # float model it is absent, i.e. zero.
                values[position] = np.zeros(_dequantize(index, node.input[position]).shape, np.float32)
            else:
                break
        else:
            if all(_fits(index, node.input[p], values[p]) for p in positions if p == 1):
                return values
    return None


def _fits(index: QdqGraph, tensor: str, value: np.ndarray) -> bool:
    """Does ``value`` round to the quantized constant feeding ``tensor`` (within half a step)?"""
    node = index.producer[tensor]
    dequantized = _dequantize(index, tensor)
    if dequantized.shape != value.shape:
        return False
    scale = numpy_helper.to_array(index.initializers[node.input[1]]).astype(np.float64)
    if scale.ndim == 1 and value.ndim > 1:
        scale = scale.reshape([-1] + [1] * (value.ndim - 1))
    # Clipped extremes (a range search may saturate outliers) are not a mismatch of frames.
    qmax = np.abs(numpy_helper.to_array(index.initializers[node.input[0]]).astype(np.float64))
    saturated = qmax >= np.iinfo(numpy_helper.to_array(index.initializers[node.input[0]]).dtype).max
    close = np.abs(value - dequantized) <= scale / 2 + 1e-6 * np.abs(value) + 1e-12
    return bool(np.all(close | saturated))


def _bypass_qdq(model: onnx.ModelProto, index: QdqGraph, tensor: str) -> None:
    """Replace QuantizeLinear(tensor) -> DequantizeLinear(...) by Identity nodes, keeping tensor names."""
    quant = index.quantize_node_of(tensor)
    if quant is None:
        return
    for dequant in index.consumers.get(quant.output[0], []):
        if dequant.op_type != "DequantizeLinear":
            continue
        identity = helper.make_node("Identity", [tensor], [dequant.output[0]], name=f"{dequant.name}__float")
        position = list(model.graph.node).index(dequant)
        model.graph.node.remove(dequant)
        model.graph.node.insert(position, identity)


def _prune(model: onnx.ModelProto) -> None:
    """Drop nodes and initializers nothing reads any more (repeat: removing one frees its inputs)."""
    graph = model.graph
    keep_outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | keep_outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _node_macs(model: onnx.ModelProto) -> dict[str, int]:
    """Multiply-accumulates per Conv/ConvTranspose/Gemm/MatMul node (others count 0).

    Hand-written because onnx has no MAC counter; uses shapes from onnx shape inference.
    """
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort: a model it rejects simply has unknown costs
        inferred = model
    shapes: dict[str, list[int]] = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in info.type.tensor_type.shape.dim]
        shapes[info.name] = dims
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    producer = {out: n for n in inferred.graph.node for out in n.output}

    def shape(name: str) -> list[int]:
        if name in shapes:
            return shapes[name]
        node = producer.get(name)  # a DequantizeLinear keeps the shape of its (initializer) input
        if node is not None and node.op_type == "DequantizeLinear":
            return shape(node.input[0])
        return []

    macs: dict[str, int] = {}
    for node in inferred.graph.node:
        out = shape(node.output[0]) if node.output else []
        if node.op_type == "Conv" and len(node.input) > 1:
            weight = shape(node.input[1])
            if out and len(weight) >= 3:
                macs[node.name] = int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type == "ConvTranspose" and len(node.input) > 1:
            weight, inp = shape(node.input[1]), shape(node.input[0])
            if inp and len(weight) >= 3:
                macs[node.name] = int(np.prod(inp)) * int(np.prod(weight[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a = shape(node.input[0])
            if out and a:
                macs[node.name] = int(np.prod(out)) * int(a[-1])
    return macs


def float_macs(model: onnx.ModelProto) -> dict[str, int]:
    """MACs of the compute nodes that do *not* run in int8: a constant input that is a plain float
    initializer, or an activation input that does not come from a DequantizeLinear.

    Used to report the real cost of a fallback: a layer turned float also makes its consumers read a
    float tensor, and those run in float too.
    """
    index = QdqGraph(model)
    result = {}
    for node in model.graph.node:
        if not index.macs.get(node.name):
            continue
        for tensor in node.input:
            if not tensor:
                continue
            producer = index.producer.get(tensor)
            from_dq = producer is not None and producer.op_type == "DequantizeLinear"
            if not from_dq:
                result[node.name] = index.macs[node.name]
                break
    return result
