"""Streaming calibration: run onnxruntime on a model that also outputs the tensors to observe, frame by frame.

Each frame's intermediate tensors update the observers and are dropped before the next frame, so peak
memory is one frame's activations plus fixed observer state, whatever the number of frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from segcompile.errors import SegcompileError
from segcompile.quantize.observers import (
    ChannelMeanObserver,
    MinMaxObserver,
    TapMeanObserver,
    make_observer,
)


def graph_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The single data input of a segmentation model."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise SegcompileError(
            f"model has {len(inputs)} data inputs; a segmentation model must have exactly one"
        )
    return inputs[0]


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """Copy of ``model`` that also returns the named intermediate tensors."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for name in names:
        if name not in present:
            out.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            present.add(name)
    return out


def make_session(model: onnx.ModelProto, optimize: bool = True) -> ort.InferenceSession:
    """A CPU onnxruntime session (graph optimizations optional: off keeps QDQ as simulated float)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise SegcompileError(f"onnxruntime cannot load the model: {exc}") from exc


def check_frame(frame: np.ndarray, index: int, expected: list[int | None]) -> np.ndarray:
    """Validate one calibration input against the model's input shape."""
    if not isinstance(frame, np.ndarray):
        raise SegcompileError(
            f"calibration input {index}: expected a numpy array, got {type(frame).__name__}"
        )
    if frame.ndim == 3:
        frame = frame[None]
    if frame.ndim != len(expected) or any(
        e is not None and e != s for e, s in zip(expected, frame.shape, strict=False)
    ):
        raise SegcompileError(
            f"calibration input {index}: shape {tuple(frame.shape)} does not match the model input "
            f"{tuple('N' if e is None else e for e in expected)}"
        )
    return np.ascontiguousarray(frame, dtype=np.float32)


def input_dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


@dataclass
class CalibrationStats:
    """Observers after the last frame, plus the first few frames kept for the layer-wise error."""

    observers: dict[str, MinMaxObserver] = field(default_factory=dict)
    # key (a conv node) -> observer of its input tensor's mean statistics
    means: dict[str, ChannelMeanObserver | TapMeanObserver] = field(default_factory=dict)
    frames: int = 0
    kept: list[np.ndarray] = field(default_factory=list)


def calibrate(
    model: onnx.ModelProto,
    tensors: list[str],
    mean_observers: dict[str, tuple[str, ChannelMeanObserver | TapMeanObserver]],
    inputs: Iterable[np.ndarray],
    method: str,
    max_frames: int,
    keep_frames: int = 0,
    progress: bool | None = None,
) -> CalibrationStats:
    """Stream up to ``max_frames`` inputs through ``model``, observing ``tensors`` and input means.

    ``mean_observers`` maps a key (a conv node) to (its input tensor, a mean observer) for bias correction.
    """
    stats = CalibrationStats(
        observers={t: make_observer(method) for t in tensors},
        means={key: observer for key, (_, observer) in mean_observers.items()},
    )
    mean_inputs: dict[str, list[str]] = {}
    for key, (tensor, _) in mean_observers.items():
        mean_inputs.setdefault(tensor, []).append(key)
    wanted = list(dict.fromkeys([*tensors, *mean_inputs]))
    inp = graph_input(model)
    dims = input_dims(inp)
    iterator: Iterator[np.ndarray] = iter(inputs)
    session = None
    bar = tqdm(
        total=max_frames, desc="calibrate", unit="frame", disable=(None if progress is None else not progress)
    )
    try:
        while stats.frames < max_frames:
            try:
                frame = next(iterator)
            except StopIteration:
                break
            frame = check_frame(frame, stats.frames, dims)
            if len(stats.kept) < keep_frames:
                stats.kept.append(frame.copy())
            if wanted:
                if session is None:
                    session = make_session(with_outputs(model, wanted))
                values = session.run(wanted, {inp.name: frame})
                for name, value in zip(wanted, values, strict=False):
                    if name in stats.observers:
                        observer = stats.observers[name]
                        observer.update(value)
                        if observer.nonfinite:
                            raise SegcompileError(
                                f"tensor {name!r}: non-finite values on calibration frame {stats.frames}"
                            )
                    for key in mean_inputs.get(name, ()):
                        stats.means[key].update(value)
                del values
            stats.frames += 1
            bar.update(1)
    finally:
        bar.close()
    return stats


def run_model(session: ort.InferenceSession, names: list[str], frame: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs ``names`` of one frame."""
    inp = session.get_inputs()[0].name
    return dict(zip(names, session.run(names, {inp: frame}), strict=False))
