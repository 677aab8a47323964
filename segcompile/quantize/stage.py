"""The quantize stage: float.onnx + calibration frames -> int8.qdq.onnx + quant_params.json."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from segcompile.artifacts import write_bytes_atomic, write_json_atomic
from segcompile.errors import SegcompileError
from segcompile.quantize.calibrate import (
    CalibrationStats,
    calibrate,
    check_frame,
    graph_input,
    input_dims,
    make_session,
    with_outputs,
)
from segcompile.quantize.equalize import clip_pair_outputs
from segcompile.quantize.equalize import equalize as equalize_graph
from segcompile.quantize.layer_error import layer_sqnr
from segcompile.quantize.observers import (
    DEFAULT_PERCENTILE,
    METHODS,
    ChannelMeanObserver,
    TapMeanObserver,
    choose_range,
    pow2_mode_for,
)
from segcompile.quantize.plan import QuantPlan, WeightedNode, build_plan, constant_tensors
from segcompile.quantize.qdq_import import ImportedRanges, has_qdq, strip_qdq
from segcompile.quantize.qdq_writer import write_qdq
from segcompile.quantize.scheme import (
    PRESETS,
    QParams,
    QuantScheme,
    activation_qparams,
    conform_qparams,
    snap_pow2,
    unsigned_variant,
    validate_scheme,
)
from segcompile.quantize.weights import (
    WEIGHT_SEARCHES,
    bias_qparams,
    dequantize_weight,
    quantize_bias,
    quantize_weight,
    tap_mean_shift,
    weight_error_mean_shift,
    weight_qparams,
)

QDQ_FILENAME = "int8.qdq.onnx"
# Frames whose pre-activation maxima let equalization cross ReLU6 (read first, then calibrated on too).
CLE_FRAMES = 8
PARAMS_FILENAME = "quant_params.json"


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize: scheme (from the target profile unless overridden), range method and extras."""

    scheme: QuantScheme = PRESETS["per-channel"]
    method: str = "minmax"  # minmax | percentile | entropy | mse
    frames: int = 64  # at most this many calibration frames, taken in order
    bias_correction: bool = True
    weight_search: str = "mse"  # minmax | mse
    equalize: bool | None = None  # cross-layer equalization; None: only for per-tensor weight schemes
    seed: int = 0  # recorded; calibration takes frames in order, so nothing here is random
    percentile: float = DEFAULT_PERCENTILE
    sqnr_frames: int = 4  # frames used for the layer-wise error
    progress: bool | None = None  # tqdm: None hides the bar when stderr is not a terminal


@dataclass(frozen=True)
class QuantizeResult:
    """What the stage wrote and how each range was obtained."""

    qdq_onnx: Path
    quant_params: Path
    frames_used: int
    calibrated: tuple[str, ...]
    imported: tuple[str, ...]  # activation ranges kept from an input QDQ graph (QAT)
    snapped: tuple[str, ...]  # imported ranges changed to fit the scheme
    worst_layers: tuple[tuple[str, float], ...] = field(default=())  # lowest SQNR first
    equalized_pairs: int = 0
    bias_corrected: int = 0


def _validate(config: QuantizeConfig) -> None:
    validate_scheme(config.scheme, "scheme")
    if config.method not in METHODS:
        raise SegcompileError(f"--method: {config.method!r} is not one of {', '.join(METHODS)}")
    if config.weight_search not in WEIGHT_SEARCHES:
        raise SegcompileError(
            f"weight_search: {config.weight_search!r} is not one of {', '.join(WEIGHT_SEARCHES)}"
        )
    if config.frames < 0:
        raise SegcompileError(f"--frames: must be >= 0, got {config.frames}")
    if not 50.0 < config.percentile <= 100.0:
        raise SegcompileError(f"percentile: must be in (50, 100], got {config.percentile}")


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX file, with errors naming it."""
    path = Path(path)
    if not path.is_file():
        raise SegcompileError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf and checker errors have many types
        raise SegcompileError(f"{path}: not a valid ONNX model ({exc})") from exc
    return model


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give unnamed nodes stable names: the plan and the report refer to nodes by name."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def _set_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
            return
    model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))


def _as_json(values: np.ndarray) -> float | list[float]:
    arr = np.asarray(values)
    return arr.tolist() if arr.ndim else arr.item()


def run_quantize(
    config: QuantizeConfig, float_onnx: Path, calib_inputs: Iterable[np.ndarray], out_dir: Path
) -> QuantizeResult:
    """Quantize ``float_onnx`` to QDQ int8 under ``config`` and write int8.qdq.onnx + quant_params.json.

    ``calib_inputs`` yields preprocessed frames (1x3xHxW float32, or 3xHxW); at most ``config.frames``
    are read, in order. An input that already carries QDQ ranges keeps them (conformed to the scheme) and
    only tensors without a range are calibrated.
    """
    _validate(config)
    scheme = config.scheme
    source = load_onnx(Path(float_onnx))
    imported = ImportedRanges()
    model = onnx.ModelProto()
    model.CopyFrom(source)
    if has_qdq(model):
        model, imported = strip_qdq(model)
    _name_nodes(model)

    use_cle = config.equalize if config.equalize is not None else not scheme.per_channel
    equalization = {"applied": False, "pairs": [], "skipped": []}
    if use_cle and not imported.weights:
        # Pairs joined by ReLU6 need the pre-activation maxima of a few frames (see equalize.py); those
        # frames are read here and handed on to the calibration below.
        remaining = iter(calib_inputs)
        head = list(itertools.islice(remaining, min(config.frames, CLE_FRAMES)))
        calib_inputs = itertools.chain(head, remaining)
        preact = _channel_maxima(model, clip_pair_outputs(model), head) if head else {}
        equalization = {"applied": True, "frames": len(head), **equalize_graph(model, preact)}

    # The layer-wise error compares against the float function before bias correction changes biases.
    # Equalization stays in: it is exact for the output, and it rescales the tensors being compared.
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    plan = build_plan(model)
    consts = constant_tensors(model)
    nodes = {n.name: n for n in model.graph.node}
    param_entries: list[dict] = []

    weight_q, weight_source, searched = _quantize_weights(plan, consts, imported, config)

    # ---- calibration --------------------------------------------------------------------------------------
    act_known, act_source = _imported_activations(plan, imported, scheme)
    to_calibrate = [t for t in plan.calibrated if t not in act_known]
    correct = [wn for wn in plan.weighted if config.bias_correction and wn.weight not in imported.weights]
    mean_observers = {wn.node: (wn.input, _mean_observer(nodes[wn.node], consts)) for wn in correct}
    need_frames = bool(to_calibrate or mean_observers)
    if need_frames and config.frames == 0:
        raise SegcompileError(
            f"--frames is 0 but {len(to_calibrate)} tensor(s) need calibration (e.g. {to_calibrate[:1]})"
        )
    stats = calibrate(
        model,
        to_calibrate if need_frames else [],
        mean_observers if need_frames else {},
        calib_inputs,
        config.method,
        config.frames,
        keep_frames=config.sqnr_frames,
        progress=config.progress,
    )
    if need_frames and stats.frames == 0:
        raise SegcompileError("calibration data yielded no frames")

    outputs = {o.name for o in model.graph.output}
    activations = _activation_params(plan, stats, act_known, act_source, config, outputs)

    bias_q, bias_entries, corrections, saturated = _quantize_biases(
        model, plan, consts, weight_q, activations, stats, correct
    )

    qdq = write_qdq(model, plan, activations, weight_q, bias_q, scheme)

    # ---- layer-wise error ---------------------------------------------------------------------------------
    sqnr = layer_sqnr(reference, qdq, list(plan.activations), activations, stats.kept) if stats.kept else {}

    for tensor, qp in activations.items():
        entry = _entry(tensor, "activation", qp, act_source[tensor])
        calibrated = act_source[tensor].startswith("calibrated:")
        entry["method"] = act_source[tensor].split(":", 1)[1].split(" ")[0] if calibrated else None
        root = plan.root(tensor)
        obs = stats.observers.get(root)
        entry["observed_range"] = [obs.min, obs.max] if obs is not None and obs.seen else None
        entry["sqnr_db"] = sqnr.get(tensor, {}).get("sqnr_db")
        entry["sqnr_local_db"] = sqnr.get(tensor, {}).get("sqnr_local_db")
        entry["folded_from"] = sorted(k for k, v in plan.folded.items() if v == tensor) or None
        param_entries.append(entry)
    for name, (qp, _) in weight_q.items():
        entry = _entry(name, "weight", qp, weight_source[name])
        entry["nodes"] = [wn.node for wn in plan.weighted if wn.weight == name]
        param_entries.append(entry)
    param_entries.extend(bias_entries)

    snapped = tuple(
        t for t, s in act_source.items() if s.startswith("qat") and ("snapped" in s or "converted" in s)
    )
    params = {
        "scheme": scheme.to_dict(),
        "method": config.method,
        "percentile": config.percentile if config.method == "percentile" else None,
        "frames": stats.frames,
        "frames_requested": config.frames,
        "sqnr_frames": len(stats.kept),
        "seed": config.seed,
        "weight_search": {"method": config.weight_search, "clipped_channels": searched},
        "bias_correction": {"applied": bool(corrections), "layers": corrections},
        "equalization": equalization,
        "saturated_biases": saturated,
        "qat_import": {
            "input_had_qdq": bool(imported),
            "kept_activation_ranges": sorted(t for t, s in act_source.items() if s.startswith("qat")),
            "kept_weight_scales": sorted(w for w, s in weight_source.items() if s.startswith("qat")),
            "calibrated": sorted(to_calibrate),
            "restored_relus": imported.restored_relus,
        },
        "float_ops": plan.float_ops,
        "tensors": param_entries,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    qdq_path = write_bytes_atomic(out_dir / QDQ_FILENAME, qdq.SerializeToString())
    params_path = write_json_atomic(out_dir / PARAMS_FILENAME, params)
    ranked = sorted(
        ((t, v["sqnr_db"]) for t, v in sqnr.items() if v["sqnr_db"] is not None), key=lambda x: x[1]
    )
    return QuantizeResult(
        qdq_onnx=qdq_path,
        quant_params=params_path,
        frames_used=stats.frames,
        calibrated=tuple(to_calibrate),
        imported=tuple(sorted(t for t, s in act_source.items() if s.startswith("qat"))),
        snapped=snapped,
        worst_layers=tuple(ranked[:5]),
        equalized_pairs=len(equalization["pairs"]),
        bias_corrected=len(corrections),
    )


def _quantize_weights(
    plan: QuantPlan, consts: dict[str, np.ndarray], imported: ImportedRanges, config: QuantizeConfig
) -> tuple[dict[str, tuple[QParams, np.ndarray]], dict[str, str], dict[str, int]]:
    """int8 weights with their parameters, how each scale was chosen, and what the MSE search clipped."""
    weight_q: dict[str, tuple[QParams, np.ndarray]] = {}
    weight_source: dict[str, str] = {}
    searched: dict[str, int] = {}  # weight -> channels whose scale the MSE search lowered below max |w|
    for wn in plan.weighted:
        if wn.weight in weight_q:
            continue
        w = consts[wn.weight].astype(np.float32)
        if wn.weight in imported.weights:
            qp, how = _conform_weight(imported.weights[wn.weight], w, wn, config.scheme)
        else:
            qp = weight_qparams(w, config.scheme, wn.axis, config.weight_search)
            how = f"weights:{'mse-search' if config.weight_search == 'mse' else 'minmax'}"
            if config.weight_search == "mse":
                covering = weight_qparams(w, config.scheme, wn.axis, "minmax").scale
                lowered = int(np.count_nonzero(np.asarray(qp.scale) < np.asarray(covering)))
                if lowered:
                    searched[wn.weight] = lowered
        weight_q[wn.weight] = (qp, quantize_weight(w, qp))
        weight_source[wn.weight] = how
    return weight_q, weight_source, searched


def _quantize_biases(
    model: onnx.ModelProto,
    plan: QuantPlan,
    consts: dict[str, np.ndarray],
    weight_q: dict[str, tuple[QParams, np.ndarray]],
    activations: dict[str, QParams],
    stats: CalibrationStats,
    correct: list[WeightedNode],
):
    """int32 biases at s_in*s_w, bias-corrected for the convs in ``correct``; updates ``model``'s biases."""
    nodes = {n.name: n for n in model.graph.node}
    bias_q: dict[str, tuple[QParams, np.ndarray]] = {}
    corrections: list[dict] = []
    saturated: list[str] = []
    entries: list[dict] = []
    for wn in plan.weighted:
        node = nodes[wn.node]
        w = consts[wn.weight].astype(np.float32)
        wqp, wint = weight_q[wn.weight]
        channels = w.shape[0] if wn.axis == 0 else w.shape[1] * wn.group
        bias_name = wn.bias
        bias = consts[bias_name].astype(np.float64) if bias_name else np.zeros(channels)
        if bias_name is None or bias_name in bias_q:
            # A conv without bias gets one (bias correction may need it); a shared bias gets its own copy.
            bias_name = f"{wn.node}_bias"
            if len(node.input) < 3:
                node.input.append(bias_name)
            else:
                node.input[2] = bias_name
        mean = stats.means.get(wn.node)
        corrected = wn in correct and mean is not None and mean.mean is not None
        if corrected:
            dequantized = dequantize_weight(wint, wqp)
            if isinstance(mean, TapMeanObserver):
                shift = tap_mean_shift(w, dequantized, mean.mean, wn.group)
            else:
                shift = weight_error_mean_shift(
                    w, dequantized, mean.mean, wn.group, wn.op_type == "ConvTranspose"
                )
            bias = bias - shift
            corrections.append(
                {
                    "node": wn.node,
                    "max_abs_shift": float(np.abs(shift).max()),
                    "mean_abs_shift": float(np.abs(shift).mean()),
                }
            )
        _set_initializer(model, bias_name, bias)
        bqp = bias_qparams(float(np.max(activations[wn.input].scale)), wqp, channels)
        bint = quantize_bias(bias.astype(np.float32), bqp)
        if np.any(np.abs(bint.astype(np.int64)) >= 2**31 - 1):
            saturated.append(bias_name)
        bias_q[bias_name] = (bqp, bint)
        source = "s_in*s_w" + (" bias-corrected" if corrected else "")
        entries.append(_entry(bias_name, "bias", bqp, source, node=wn.node))
    return bias_q, entries, corrections, saturated


def _mean_observer(node: onnx.NodeProto, consts: dict[str, np.ndarray]):
    """Per-tap input means for a 2-D Conv with explicit padding, per-channel means otherwise."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    kernel = consts[node.input[1]].shape[2:]
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if node.op_type != "Conv" or len(kernel) != 2 or auto_pad not in (b"NOTSET", "NOTSET"):
        return ChannelMeanObserver()
    pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    return TapMeanObserver(
        kernel=tuple(kernel),
        strides=tuple(attrs.get("strides", (1, 1))),
        pads=(pads[0], pads[1], pads[2], pads[3]),
        dilations=tuple(attrs.get("dilations", (1, 1))),
    )


def _channel_maxima(model: onnx.ModelProto, tensors: list[str], frames: list[np.ndarray]) -> dict:
    """Per-channel maximum of NCHW ``tensors`` over ``frames``."""
    if not tensors:
        return {}
    dims = input_dims(graph_input(model))
    session = make_session(with_outputs(model, tensors))
    name = session.get_inputs()[0].name
    peaks: dict[str, np.ndarray] = {}
    for index, frame in enumerate(frames):
        values = session.run(tensors, {name: check_frame(frame, index, dims)})
        for tensor, value in zip(tensors, values, strict=True):
            peak = value.max(axis=tuple(i for i in range(value.ndim) if i != 1))
            peaks[tensor] = peak if tensor not in peaks else np.maximum(peaks[tensor], peak)
    return peaks


def _entry(name: str, role: str, qp: QParams, source: str, node: str | None = None) -> dict:
    entry = {
        "name": name,
        "role": role,
        "scale": _as_json(qp.scale),
        "zero_point": _as_json(qp.zero_point),
        "bits": 32 if qp.dtype == "int32" else 8,
        "dtype": qp.dtype,
        "axis": qp.axis if np.ndim(qp.scale) == 1 else None,
        "source": source,
    }
    if node is not None:
        entry["node"] = node
    return entry


def _conform_weight(qp: QParams, w: np.ndarray, wn: WeightedNode, scheme: QuantScheme) -> tuple[QParams, str]:
    """Imported (QAT) weight scales, made symmetric/per-tensor/power-of-2 as the scheme requires."""
    scale = np.asarray(qp.scale, np.float32)
    changes = []
    if np.any(np.asarray(qp.zero_point) != 0) or qp.dtype != "int8":
        return weight_qparams(w, scheme, wn.axis, "minmax"), "qat:requantized-symmetric"
    if scheme.per_channel and scale.ndim == 0:
        channels = w.shape[wn.axis]
        scale = np.full(channels, float(scale), np.float32)
    if not scheme.per_channel and scale.ndim == 1:
        scale = np.asarray(scale.max(), np.float32)
        changes.append("per-tensor")
    if scheme.power_of_2:
        snapped = snap_pow2(scale, "ceil")
        if np.any(snapped != scale):
            changes.append("snapped-pow2")
        scale = snapped
    if scale.ndim == 1:
        out = QParams(scale=scale, zero_point=np.zeros(scale.shape, np.int8), dtype="int8", axis=wn.axis)
    else:
        out = QParams(scale=np.asarray(scale, np.float32), zero_point=np.asarray(0, np.int8), dtype="int8")
    return out, "qat" + (":" + "+".join(changes) if changes else "")


def _tensor_scheme(plan: QuantPlan, tensor: str, scheme: QuantScheme) -> QuantScheme:
    """The scheme of one activation: uint8 with zero point 0 for non-negative ones when asked for."""
    if scheme.unsigned_activations and tensor in plan.nonnegative:
        return unsigned_variant(scheme)
    return scheme


def _imported_activations(
    plan: QuantPlan, imported: ImportedRanges, scheme: QuantScheme
) -> tuple[dict[str, QParams], dict[str, str]]:
    """Ranges kept from the input QDQ graph, conformed to the scheme, keyed by plan tensor."""
    known: dict[str, QParams] = {}
    source: dict[str, str] = {}
    for tensor in plan.activations:
        qp = imported.activations.get(tensor)
        derived_from = None
        if qp is None:
            # QAT graphs that quantized a conv output before its ReLU: the folded range is the ReLU'd one.
            folded = [k for k, v in plan.folded.items() if v == tensor and k in imported.activations]
            if folded:
                derived_from = folded[0]
                lo, hi = imported.activations[derived_from].real_range()
                qp = activation_qparams(max(lo, 0.0), hi, _tensor_scheme(plan, tensor, scheme))
        if qp is None:
            continue
        conformed, changes = conform_qparams(qp, _tensor_scheme(plan, tensor, scheme))
        known[tensor] = conformed
        label = "qat" if derived_from is None else f"qat:derived-from:{derived_from}"
        source[tensor] = label + (":" + "+".join(changes) if changes else "")
    return known, source


def _activation_params(
    plan: QuantPlan,
    stats: CalibrationStats,
    known: dict[str, QParams],
    source: dict[str, str],
    config: QuantizeConfig,
    outputs: set[str],
) -> dict[str, QParams]:
    """Parameters of every planned activation: imported, calibrated, or shared with its input.

    Two kinds of tensor keep their full min/max whatever the method: the model's outputs (and what they
    share a range with), since clipping logits ties the largest scores exactly where argmax decides; and
    Clip(., hi) outputs (ReLU6), whose top bin holds frequent saturated values rather than rare outliers
    (KL divergence happily clips those and costs ~20 dB of SQNR on MobileNetV2).
    """
    outputs_roots = {plan.root(t) for t in outputs if t in plan.activations}
    params: dict[str, QParams] = {}
    for tensor, how in plan.activations.items():
        if tensor in known:
            params[tensor] = known[tensor]
            continue
        if how != "calibrate":
            continue
        obs = stats.observers.get(tensor)
        if obs is None or not obs.seen:
            raise SegcompileError(f"tensor {tensor!r}: no calibration data reached it")
        scheme = _tensor_scheme(plan, tensor, config.scheme)
        why = (
            "model output"
            if tensor in outputs_roots
            else "clip-bounded"
            if tensor in plan.clip_bounded
            else ""
        )
        method = "minmax" if why else config.method
        lo, hi = choose_range(obs, method, scheme, config.percentile)
        mode = pow2_mode_for(obs, method, lo, hi, scheme) if scheme.power_of_2 else "ceil"
        params[tensor] = activation_qparams(lo, hi, scheme, mode)
        source[tensor] = f"calibrated:{method}" + (f" ({why})" if why and method != config.method else "")
    for tensor in plan.activations:
        if tensor in params:
            continue
        root = plan.root(tensor)
        if root not in params:
            raise SegcompileError(f"tensor {tensor!r}: its shared range source {root!r} has no parameters")
        params[tensor] = params[root]
        source[tensor] = f"shared:{root}"
    return params
