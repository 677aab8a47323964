"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019) on a float ONNX graph.

For two convs joined directly or through a ReLU, scaling output channel i of the first by 1/s_i and the
matching input channel of the second by s_i leaves the float function unchanged (ReLU is positively
homogeneous) and, with s_i = sqrt(r1_i / r2_i), gives both the same per-channel weight range. This helps
per-tensor schemes most, where one wide depthwise channel otherwise crushes the resolution of the others.

Clip(0, H) (ReLU6) is not homogeneous: the scaled pair computes clip(x_i, 0, H * s_i) instead of
clip(x_i, 0, H). Given the largest pre-activation m_i seen on calibration frames, the pair stays exact on
that data when channel i never reached H (then s_i >= m_i / H keeps the moved bound above every value);
channels whose clip was active keep s_i = 1. Without statistics such pairs are skipped and reported.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from segcompile.quantize.plan import constant_tensors, consumers_of


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _clip_bounds(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> tuple[float, float] | None:
    """(low, high) of a Clip with constant bounds, else None."""
    names = list(node.input[1:3]) + [""] * (2 - len(node.input[1:3]))
    if any(n and n not in consts for n in names):
        return None
    low = float(consts[names[0]]) if names[0] else -np.inf
    high = float(consts[names[1]]) if names[1] else np.inf
    return low, high


def _find_pairs(model: onnx.ModelProto):
    """(conv1, act or None, conv2) chains eligible for equalization."""
    users = consumers_of(model)
    inits = _initializers(model)
    consts = constant_tensors(model)
    outputs = {o.name for o in model.graph.output}
    pairs = []

    def single_user(name: str) -> onnx.NodeProto | None:
        nodes = users.get(name, [])
        return nodes[0] if len(nodes) == 1 and name not in outputs else None

    def owned(name: str | None) -> bool:
        # An initializer shared by several nodes cannot be rescaled for one of them.
        return name is None or (name in inits and len(users.get(name, [])) == 1)

    for conv1 in model.graph.node:
        if conv1.op_type != "Conv":
            continue
        nxt = single_user(conv1.output[0])
        act = None
        if nxt is not None and nxt.op_type in ("Relu", "Clip"):
            if nxt.op_type == "Clip":
                bounds = _clip_bounds(nxt, consts)
                # Only a zero lower bound stays put under positive scaling.
                if bounds is None or bounds[0] != 0.0 or not np.isfinite(bounds[1]):
                    continue
            act = nxt
            nxt = single_user(nxt.output[0])
        if nxt is None or nxt.op_type != "Conv" or nxt.input[0] != (act or conv1).output[0]:
            continue
        bias1 = conv1.input[2] if len(conv1.input) > 2 and conv1.input[2] else None
        if not (owned(conv1.input[1]) and owned(bias1) and owned(nxt.input[1])):
            continue
        pairs.append((conv1, act, nxt))
    return pairs


def clip_pair_outputs(model: onnx.ModelProto) -> list[str]:
    """Conv outputs feeding a Clip inside an equalizable pair: their per-channel maxima are needed."""
    return [
        conv1.output[0] for conv1, act, _ in _find_pairs(model) if act is not None and act.op_type == "Clip"
    ]


def _set(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
            return
    raise KeyError(name)


def _spread(ranges: np.ndarray) -> float:
    positive = ranges[ranges > 0]
    return float(positive.max() / positive.min()) if positive.size else 1.0


def equalize(
    model: onnx.ModelProto, preact_max: dict[str, np.ndarray] | None = None, passes: int = 4
) -> dict:
    """Equalize eligible conv pairs of ``model`` in place; returns what changed (for quant_params.json).

    ``preact_max`` maps a conv output feeding a Clip(0, H) to its per-channel maximum on calibration data;
    pairs through a Clip without it are skipped.
    """
    consts = constant_tensors(model)
    preact = {k: np.asarray(v, np.float64).copy() for k, v in (preact_max or {}).items()}
    pairs, skipped = [], []
    for conv1, act, conv2 in _find_pairs(model):
        if act is not None and act.op_type == "Clip" and conv1.output[0] not in preact:
            skipped.append({"first": conv1.name, "second": conv2.name, "reason": "Clip without statistics"})
        else:
            pairs.append((conv1, act, conv2))
    changed: dict[tuple[str, str], dict] = {}
    for _ in range(passes):
        inits = _initializers(model)
        for conv1, act, conv2 in pairs:
            w1 = numpy_helper.to_array(inits[conv1.input[1]]).astype(np.float64)
            w2 = numpy_helper.to_array(inits[conv2.input[1]]).astype(np.float64)
            channels = w1.shape[0]
            group2 = _group(conv2)
            cin_g = w2.shape[1]
            if cin_g * group2 != channels:
                continue
            cout_g = w2.shape[0] // group2
            rows = [slice((i // cin_g) * cout_g, (i // cin_g + 1) * cout_g) for i in range(channels)]
            r1 = np.abs(w1.reshape(channels, -1)).max(axis=1)
            # Range of input channel i in conv2: its column within its group's block of output rows.
            r2 = np.array([np.abs(w2[rows[i], i % cin_g]).max() for i in range(channels)])
            valid = (r1 > 0) & (r2 > 0)
            s = np.ones(channels)
            s[valid] = np.sqrt(r1[valid] / r2[valid])
            if act is not None and act.op_type == "Clip":
                high = _clip_bounds(act, consts)[1]
                peak = preact[conv1.output[0]]
                active = peak > high
                s = np.where(active, 1.0, np.maximum(s, peak / high))
            key = (conv1.name, conv2.name)
            if key not in changed:
                changed[key] = {
                    "first": conv1.name,
                    "second": conv2.name,
                    "via": act.op_type if act else "direct",
                    "spread_before": _spread(r1),
                }
            w1 = w1 / s.reshape(-1, *([1] * (w1.ndim - 1)))
            for i in range(channels):
                w2[rows[i], i % cin_g] *= s[i]
            _set(model, conv1.input[1], w1)
            _set(model, conv2.input[1], w2)
            if len(conv1.input) > 2 and conv1.input[2]:
                b1 = numpy_helper.to_array(inits[conv1.input[2]]).astype(np.float64)
                _set(model, conv1.input[2], b1 / s)
            if conv1.output[0] in preact:
                preact[conv1.output[0]] = preact[conv1.output[0]] / s
            inits = _initializers(model)
    inits = _initializers(model)
    nodes = {n.name: n for n in model.graph.node}
    for (first, _second), info in changed.items():
        w1 = numpy_helper.to_array(inits[nodes[first].input[1]])
        info["spread_after"] = _spread(np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1))
    return {"pairs": list(changed.values()), "skipped": skipped}
