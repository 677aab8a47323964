"""Which tensors of a float ONNX graph get quantized, and how: the contract the QDQ writer expresses.

Rules (mirrored by the QAT wrapper in qat.py so a QAT export carries a range for every tensor here):
- every float activation consumed by, or produced by, a quantizable op gets a Q/DQ pair;
- the output of a Conv/ConvTranspose/Add/Mul/BatchNormalization feeding only a ReLU/Clip is not quantized:
  the activation is folded into the op's output range, so the Q/DQ sits after the activation;
- elementwise activations (Sigmoid, HardSigmoid, HardSwish, Tanh, LeakyRelu), Mul (squeeze-excite gates)
  and BatchNormalization left unfused (after a Concat or an Add) get their own range: the integer lowering
  turns the activations into a 256-entry lookup table, Mul into an int32 product, BN into a per-channel
  fixed-point affine;
- data-movement ops (MaxPool, Resize, Pad, Reshape, ...) reuse their input's scale ("shared"), since their
  output values are (convex combinations of) input values and the integer kernel needs no requantization;
- Conv/ConvTranspose weights become int8 initializers + DequantizeLinear; biases int32 at s_in*s_w;
- a grouped ConvTranspose stays float: per-channel weight scales sit on axis 1 of its weight, which holds
  only C_out/group channels, so no DequantizeLinear can express them (see ``is_quantizable``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from segcompile.errors import SegcompileError

WEIGHTED_OPS = {"Conv", "ConvTranspose"}
FOLDABLE_ACTIVATIONS = {"Relu", "Clip"}
# Producers whose output range absorbs a following ReLU/Clip (see the module docstring).
FOLDING_PRODUCERS = {"Conv", "ConvTranspose", "Add", "Sub", "Sum", "Mul", "BatchNormalization"}
# One-input elementwise functions: quantized in and out, lowered to an int8 lookup table.
ELEMENTWISE_ACTIVATIONS = {"Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu"}
# Their outputs are >= 0 whatever the input.
NONNEGATIVE_ACTIVATIONS = {"Sigmoid", "HardSigmoid"}
# Ops whose output gets its own calibrated range.
RANGE_OPS = {
    "Conv",
    "ConvTranspose",
    "Add",
    "Sub",
    "Concat",
    "Relu",
    "Clip",
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "Sum",
    "Mul",
    "BatchNormalization",
    *ELEMENTWISE_ACTIVATIONS,
}
# Ops whose output reuses the input's scale and zero point; value: the index of the data input.
SHARED_OPS = {
    "MaxPool": 0,
    "Resize": 0,
    "Pad": 0,
    "Reshape": 0,
    "Flatten": 0,
    "Transpose": 0,
    "Squeeze": 0,
    "Unsqueeze": 0,
    "Slice": 0,
    "DepthToSpace": 0,
    "SpaceToDepth": 0,
    "Upsample": 0,
    "Identity": 0,
}
# Data inputs (positions) of each quantizable op; the rest are shapes, scales, weights...
DATA_INPUTS = {
    "Conv": (0,),
    "ConvTranspose": (0,),
    "Add": (0, 1),
    "Sub": (0, 1),
    "Relu": (0,),
    "Clip": (0,),
    "AveragePool": (0,),
    "GlobalAveragePool": (0,),
    "ReduceMean": (0,),
    "Mul": (0, 1),
    "BatchNormalization": (0,),
    **{op: (0,) for op in ELEMENTWISE_ACTIVATIONS},
}


@dataclass(frozen=True)
class WeightedNode:
    """A Conv/ConvTranspose whose weight (and bias) the writer turns into integers."""

    node: str
    op_type: str
    input: str
    weight: str
    bias: str | None
    output: str
    group: int
    # Axis of the output channels in the weight tensor: 0 for Conv, 1 for ConvTranspose.
    axis: int


@dataclass
class QuantPlan:
    """Quantized tensors in graph order, with how each gets its range."""

    # tensor -> "calibrate" | "shared:<tensor>"
    activations: dict[str, str] = field(default_factory=dict)
    weighted: list[WeightedNode] = field(default_factory=list)
    # float tensor -> activation output that carries its range (e.g. conv output -> relu output)
    folded: dict[str, str] = field(default_factory=dict)
    # ops left in float (inputs dequantized, outputs not quantized), node name -> op type
    float_ops: dict[str, str] = field(default_factory=dict)
    # quantized tensors that are non-negative by construction (ReLU/Clip(>=0) outputs and what only
    # moves, pools, adds or concatenates them)
    nonnegative: set[str] = field(default_factory=set)
    # outputs of a Clip with a constant upper bound (ReLU6): their range is already bounded
    clip_bounded: set[str] = field(default_factory=set)

    def root(self, tensor: str) -> str:
        """The tensor whose range ``tensor`` shares (itself when calibrated)."""
        seen = set()
        while self.activations.get(tensor, "calibrate").startswith("shared:"):
            if tensor in seen:
                raise SegcompileError(f"cycle in shared quantization ranges at tensor {tensor!r}")
            seen.add(tensor)
            tensor = self.activations[tensor].split(":", 1)[1]
        return tensor

    @property
    def calibrated(self) -> list[str]:
        return [t for t, how in self.activations.items() if how == "calibrate"]


def constant_tensors(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers plus Constant node outputs, by name."""
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute:
            attr = node.attribute[0]
            if attr.name == "value":
                consts[node.output[0]] = numpy_helper.to_array(attr.t)
    return consts


def consumers_of(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name:
                users.setdefault(name, []).append(node)
    return users


def _data_inputs(node: onnx.NodeProto) -> list[str]:
    if node.op_type in ("Concat", "Sum"):
        return [n for n in node.input if n]
    if node.op_type in SHARED_OPS:
        return [node.input[SHARED_OPS[node.op_type]]]
    return [node.input[i] for i in DATA_INPUTS.get(node.op_type, ()) if i < len(node.input) and node.input[i]]


def is_quantizable(node: onnx.NodeProto) -> bool:
    """Ops the integer kernels implement (a grouped ConvTranspose stays float, see the module docstring)."""
    if node.op_type == "ConvTranspose" and next((a.i for a in node.attribute if a.name == "group"), 1) != 1:
        return False
    if node.op_type == "BatchNormalization" and any(
        a.name == "training_mode" and a.i for a in node.attribute
    ):
        return False  # training-mode BN normalizes with batch statistics: not a fixed affine map
    return node.op_type in RANGE_OPS or node.op_type in SHARED_OPS or node.op_type in WEIGHTED_OPS


def _has_computed_weights(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> bool:
    """A Conv/ConvTranspose whose weight or bias is computed in the graph: it stays float.

    The int8 weights and int32 bias are made once, at quantization time, so they must be constants.
    """
    if node.op_type not in WEIGHTED_OPS:
        return False
    parameters = [name for name in node.input[1:3] if name]
    return len(node.input) < 2 or any(name not in consts for name in parameters)


def build_plan(model: onnx.ModelProto) -> QuantPlan:
    """Decide every quantized tensor of a float model (Q/DQ nodes must already be stripped)."""
    graph = model.graph
    consts = constant_tensors(model)
    users = consumers_of(model)
    outputs = {o.name for o in graph.output}
    plan = QuantPlan()

    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            raise SegcompileError(f"node {node.name!r}: QDQ nodes must be stripped before planning")

    non_float = _non_float_tensors(model)

    def is_activation(name: str) -> bool:
        # Shape arithmetic (int64 Mul/Add/Concat of a dynamic export) is not an activation to quantize.
        return bool(name) and name not in consts and name not in non_float

    def folds_into_activation(name: str) -> onnx.NodeProto | None:
        """The single ReLU/Clip that consumes ``name``, if folding applies."""
        nodes = users.get(name, [])
        if name in outputs or len(nodes) != 1 or nodes[0].op_type not in FOLDABLE_ACTIVATIONS:
            return None
        act = nodes[0]
        if act.input[0] != name:
            return None
        # Clip bounds must be constants to be folded into a range.
        if any(n and n not in consts for n in act.input[1:]):
            return None
        return act

    wanted: list[str] = []

    def want(name: str) -> None:
        if is_activation(name) and name not in wanted and name not in plan.folded:
            wanted.append(name)

    for inp in graph.input:
        if inp.name in consts:
            continue
        if any(is_quantizable(n) for n in users.get(inp.name, [])):
            want(inp.name)
    for node in graph.node:
        if not is_quantizable(node) or _has_computed_weights(node, consts):
            if node.op_type != "Constant":
                plan.float_ops[node.name] = node.op_type
            continue
        for name in _data_inputs(node):
            want(name)
        if node.op_type in WEIGHTED_OPS:
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            plan.weighted.append(
                WeightedNode(
                    node=node.name,
                    op_type=node.op_type,
                    input=node.input[0],
                    weight=node.input[1],
                    bias=bias,
                    output=node.output[0],
                    group=group,
                    axis=1 if node.op_type == "ConvTranspose" else 0,
                )
            )
        out = node.output[0]
        if node.op_type in FOLDING_PRODUCERS and folds_into_activation(out):
            plan.folded[out] = folds_into_activation(out).output[0]
            continue
        want(out)

    # A tensor whose producer is a data-movement op with a quantized input shares that input's range.
    producer = {o: n for n in graph.node for o in n.output}
    plan.nonnegative = _nonnegative_tensors(graph, consts) & set(wanted)
    plan.clip_bounded = {
        n.output[0]
        for n in graph.node
        if n.op_type == "Clip" and len(n.input) > 2 and n.input[2] in consts and n.output[0] in wanted
    }
    for name in wanted:
        node = producer.get(name)
        if node is not None and node.op_type in SHARED_OPS and node.input[SHARED_OPS[node.op_type]] in wanted:
            plan.activations[name] = f"shared:{node.input[SHARED_OPS[node.op_type]]}"
        else:
            plan.activations[name] = "calibrate"
    return plan


_PRESERVE_SIGN = {"MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Concat", "Add", "Sum"}
_ALL_INPUTS = ("Concat", "Add", "Sum")


def _nonnegative_tensors(graph: onnx.GraphProto, consts: dict[str, np.ndarray]) -> set[str]:
    """Tensors that cannot be negative whatever the input (structural, not observed)."""
    found: set[str] = set()
    for node in graph.node:
        op = node.op_type
        if op == "Relu" or op in NONNEGATIVE_ACTIVATIONS:
            found.add(node.output[0])
        elif op == "Clip":
            low = node.input[1] if len(node.input) > 1 else ""
            if low in consts and float(np.asarray(consts[low]).max()) >= 0.0:
                found.add(node.output[0])
        elif op in SHARED_OPS:
            cubic = any(a.name == "mode" and a.s == b"cubic" for a in node.attribute)  # overshoots below 0
            if (
                node.input
                and node.input[SHARED_OPS[op]] in found
                and not cubic
                and not _negative_pad(node, consts)
            ):
                found.add(node.output[0])
        elif op == "Mul":
            # A product is >= 0 when every activation factor is, and every constant factor too.
            factors = [n for n in node.input if n]
            if factors and all(n in found or (n in consts and np.all(consts[n] >= 0)) for n in factors):
                if any(n in found for n in factors):
                    found.add(node.output[0])
        elif op in _PRESERVE_SIGN:
            inputs = [n for n in node.input if n] if op in _ALL_INPUTS else node.input[:1]
            if inputs and all(n in found for n in inputs):
                found.add(node.output[0])
    return found


def _non_float_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors that shape inference types as something other than float (unknown types count as float)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is only a hint here; without it every tensor counts as float
        inferred = model
    graph = inferred.graph
    typed = [*graph.input, *graph.value_info, *graph.output]
    return {
        v.name
        for v in typed
        if v.type.HasField("tensor_type")
        and v.type.tensor_type.elem_type not in (0, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    }


def _negative_pad(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> bool:
    """A constant-mode Pad whose fill value is below 0 (its output can be negative)."""
    if node.op_type != "Pad":
        return False
    mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
    if mode != b"constant":
        return False
    value = next((a.f for a in node.attribute if a.name == "value"), 0.0)  # opset < 11
    if len(node.input) > 2 and node.input[2]:
        fill = consts.get(node.input[2])
        value = float(np.asarray(fill).reshape(-1)[0]) if fill is not None and np.size(fill) else -1.0
    return value < 0.0
