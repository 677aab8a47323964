"""Accuracy-aware fallback: move the worst layers out of int8 until the mIoU drop fits the budget.

Ranking (worst first) comes either from the quantize stage's per-tensor SQNR (``sqnr``) or from a
quick sensitivity pass (``sensitivity``): for each layer, a copy of the QDQ model where *only that
layer* stays quantized is run with onnxruntime on a few inputs, and the SQNR of the final output
against the float model says how much that layer alone hurts. The sensitivity pass catches what a
tensor's own SQNR can miss (e.g. weights crushed by per-tensor scaling show up only downstream).

The loop itself only needs two callables — ``requantize(excluded_layers) -> build folder`` and
``evaluate(build folder) -> (int8 mIoU, drop)`` — so the pipeline can plug in 16-bit or
float-on-ARM re-quantization and re-compilation as it likes; :class:`FloatFallback` is the default
that keeps the chosen layers in float inside the QDQ model.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from segcompile.artifacts import atomic_path
from segcompile.errors import SegcompileError
from segcompile.report.assemble import quant_tensors, read_json
from segcompile.verify.qdq_layers import INPUT_LAYER, QdqGraph, float_macs, strip_quantization
from segcompile.verify.runners import find_library

RANKINGS = ("sensitivity", "sqnr")
_SQNR_CAP_DB = 200.0  # an exact match would be +inf dB; cap it so JSON stays finite


@dataclass(frozen=True)
class RankedLayer:
    """A layer with the error that ranks it (lower SQNR = worse) and its cost in MACs."""

    node: str
    tensor: str
    sqnr_db: float
    macs: int
    source: str  # "sensitivity" | "sqnr"


@dataclass(frozen=True)
class FallbackStep:
    """One candidate: the layers asked out of int8, what actually runs in float, and its accuracy."""

    excluded: tuple[str, ...]
    build_dir: Path
    int8_miou: float
    miou_drop: float
    macs_moved: int
    float_nodes: tuple[str, ...] = ()  # compute nodes newly in float (consumers of a float tensor too)


@dataclass(frozen=True)
class FallbackResult:
    """What the fallback changed: the steps tried, the accepted build and its cost."""

    passed: bool
    max_drop: float
    initial_drop: float
    ranking: tuple[RankedLayer, ...]
    steps: tuple[FallbackStep, ...]
    macs_total: int
    final: FallbackStep | None = field(default=None)

    build_root: Path | None = None
    precision: str = "float"  # what the moved layers run in (the requantizer's ``precision``)
    screened_by: str | None = None  # runner that judged the steps, when the final one was re-checked
    confirmed_by: str | None = None  # runner that judged the final candidate

    def _where(self, candidate: Path) -> str:
        """A candidate's folder relative to the build folder when inside it (reports stay relocatable)."""
        if self.build_root is not None and candidate.is_relative_to(self.build_root):
            return candidate.relative_to(self.build_root).as_posix()
        return str(candidate)

    def to_json(self) -> dict[str, Any]:
        """The ``fallback`` section of report.json."""
        final = self.final
        return {
            "passed": self.passed,
            "max_drop": self.max_drop,
            "initial_drop": self.initial_drop,
            "final_drop": final.miou_drop if final else self.initial_drop,
            "layers_moved": list(final.excluded) if final else [],
            "float_nodes": list(final.float_nodes) if final else [],
            "precision": self.precision,
            "accepted_build": self._where(final.build_dir) if final and self.passed else None,
            "screened_by": self.screened_by,
            "confirmed_by": self.confirmed_by,
            "macs_moved": final.macs_moved if final else 0,
            "macs_total": self.macs_total,
            "macs_moved_percent": round(100.0 * final.macs_moved / self.macs_total, 3)
            if final and self.macs_total else 0.0,
            "ranking": [asdict(layer) for layer in self.ranking],
            "steps": [
                {**asdict(step), "build_dir": self._where(step.build_dir), "excluded": list(step.excluded),
                 "float_nodes": list(step.float_nodes)}
                for step in self.steps
            ],
        }


def float_twins(float_onnx: Path, quant_params: dict[str, Any] | None) -> list[onnx.ModelProto]:
    """float.onnx, plus a copy transformed like the quantize stage did (cross-layer equalization).

    The fallback needs float weights in the same frame as the int8 graph's neighbours; which of these
    fits is decided per layer by :func:`strip_quantization`.
    """
    original = onnx.load(str(float_onnx))
    twins = [original]
    if ((quant_params or {}).get("equalization") or {}).get("applied"):
        try:
            from segcompile.quantize.equalize import equalize
        except ImportError:
            return twins
        equalized = onnx.ModelProto()
        equalized.CopyFrom(original)
        equalize(equalized)
        twins.append(equalized)
    return twins


def _sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - approx) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if noise == 0.0:
        return _SQNR_CAP_DB
    if signal == 0.0:
        return -_SQNR_CAP_DB
    return max(-_SQNR_CAP_DB, min(_SQNR_CAP_DB, 10.0 * math.log10(signal / noise)))


def rank_by_sensitivity(
    float_onnx: Path,
    qdq_onnx: Path,
    inputs: Sequence[np.ndarray],
    threads: int = 0,
    quant_params: dict[str, Any] | None = None,
) -> list[RankedLayer]:
    """Rank layers by the output SQNR of a model where only that layer is quantized (worst first).

    ``quant_params`` (quant_params.json) tells which weight transforms the quantizer applied.
    """
    if not inputs:
        raise SegcompileError("sensitivity ranking needs at least one input frame")
    twins = float_twins(float_onnx, quant_params)
    float_model = twins[0]
    qdq_model = onnx.load(str(qdq_onnx))
    index = QdqGraph(qdq_model, str(qdq_onnx))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3

    def run(model: onnx.ModelProto) -> list[np.ndarray]:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return [session.run(None, {name: x})[0] for x in inputs]

    reference = run(float_model)
    everyone = [layer.node for layer in index.layers] + [INPUT_LAYER]
    ranked = []
    for layer in tqdm(index.layers, desc="sensitivity", unit="layer", disable=None, leave=False):
        others = [name for name in everyone if name != layer.node]
        alone = strip_quantization(qdq_model, twins, others, str(qdq_onnx))
        outputs = run(alone)
        sqnr = _sqnr_db(np.concatenate([r.ravel() for r in reference]),
                        np.concatenate([o.ravel() for o in outputs]))
        ranked.append(RankedLayer(layer.node, layer.output, round(sqnr, 3), layer.macs, "sensitivity"))
    return sorted(ranked, key=lambda r: (r.sqnr_db, r.node))


def rank_by_sqnr(qdq_onnx: Path, quant_params: dict[str, Any] | None) -> list[RankedLayer]:
    """Rank layers by the quantize stage's SQNR of the activation each layer outputs (worst first).

    The local SQNR (that tensor quantized alone) is preferred when recorded: it blames the layer for
    its own error, not for what it inherited from upstream.
    """
    sqnr = {}
    for tensor in quant_tensors(quant_params):
        value = tensor.get("sqnr_local_db", tensor.get("sqnr_db"))
        if value is None:
            value = tensor.get("sqnr_db")
        if value is not None:
            sqnr[tensor["name"]] = value
    if not sqnr:
        raise SegcompileError(
            f"{qdq_onnx.parent / 'quant_params.json'}: no per-tensor sqnr_db to rank layers by; "
            "use --rank sensitivity"
        )
    index = QdqGraph(onnx.load(str(qdq_onnx)), str(qdq_onnx))
    ranked = []
    for layer in index.layers:
        name = next((alias for alias in layer.aliases if alias in sqnr), None)
        if name is not None:
            ranked.append(RankedLayer(layer.node, name, float(sqnr[name]), layer.macs, "sqnr"))
    return sorted(ranked, key=lambda r: (r.sqnr_db, r.node))


def run_fallback(
    ranking: Sequence[RankedLayer],
    requantize: Callable[[tuple[str, ...]], Path],
    evaluate: Callable[[Path], tuple[float, float]],
    max_drop: float,
    initial_drop: float,
    macs_total: int,
    max_layers: int = 8,
    original_qdq: Path | None = None,
) -> FallbackResult:
    """Move layers out of int8 in ranking order, one more per step, until the drop is within ``max_drop``.

    ``requantize`` builds a candidate with the given layers kept out of int8 and returns its build
    folder; ``evaluate`` returns (int8 mIoU, drop in points) for a folder. Stops at ``max_layers``.
    The MAC cost is measured on the candidate's int8.qdq.onnx when it has one (every compute node
    that ends up in float, compared with ``original_qdq``), else summed over the excluded layers.
    """
    already_float = set(float_macs(onnx.load(str(original_qdq)))) if original_qdq else set()
    steps: list[FallbackStep] = []
    if initial_drop <= max_drop:
        return FallbackResult(True, max_drop, initial_drop, tuple(ranking), (), macs_total)
    best: FallbackStep | None = None
    for count in range(1, min(max_layers, len(ranking)) + 1):
        chosen = ranking[:count]
        excluded = tuple(layer.node for layer in chosen)
        build_dir = requantize(excluded)
        int8_miou, drop = evaluate(build_dir)
        candidate = build_dir / "int8.qdq.onnx"
        if candidate.is_file():
            moved = {n: m for n, m in float_macs(onnx.load(str(candidate))).items() if n not in already_float}
            cost, float_nodes = sum(moved.values()), tuple(sorted(moved))
        else:
            cost, float_nodes = sum(layer.macs for layer in chosen), excluded
        step = FallbackStep(excluded, build_dir, round(int8_miou, 4), round(drop, 4), cost, float_nodes)
        steps.append(step)
        # Only a step that beats the all-int8 drop is worth reporting as the best effort.
        if step.miou_drop < (best.miou_drop if best else initial_drop):
            best = step
        if drop <= max_drop:
            best = step
            break
    passed = best is not None and best.miou_drop <= max_drop
    return FallbackResult(passed, max_drop, initial_drop, tuple(ranking), tuple(steps), macs_total, best)


class FloatFallback:
    """Default ``requantize``: a candidate build folder whose QDQ model keeps the layers in float.

    Candidates go to ``<build>/fallback/step-NN/`` with the float model beside them, so each one is
    a build folder the runners understand. When the original build has a host library (or
    ``compile_host`` says so) the candidate's integer program is lowered and built for the host too,
    so it is judged by the compiled module like the original; board builds are the pipeline's business.
    """

    precision = "float"

    def __init__(self, build_dir: Path, compile_host: bool | None = None) -> None:
        self.build_dir = Path(build_dir)
        params = read_json(self.build_dir / "quant_params.json")
        self._twins = float_twins(self.build_dir / "float.onnx", params)
        self.notes: list[str] = []
        self._qdq = onnx.load(str(self.build_dir / "int8.qdq.onnx"))
        if compile_host is None:
            compile_host = find_library(self.build_dir, "x86_64") is not None
        self.compile_host = compile_host
        self._count = 0

    def __call__(self, excluded: tuple[str, ...]) -> Path:
        self._count += 1
        target = self.build_dir / "fallback" / f"step-{self._count:02d}"
        model = strip_quantization(self._qdq, self._twins, excluded, str(self.build_dir / "int8.qdq.onnx"),
                                   self.notes)
        with atomic_path(target) as temp:
            temp.mkdir()
            shutil.copyfile(self.build_dir / "float.onnx", temp / "float.onnx")
            onnx.save(model, str(temp / "int8.qdq.onnx"))
            if self.compile_host:
                build_host_library(temp / "int8.qdq.onnx", temp / "host")
        return target


def build_host_library(qdq_onnx: Path, out_dir: Path) -> Path:
    """Lower a QDQ model to the integer program and build it for this machine (``out_dir/model.so``)."""
    from segcompile.compile.host_runtime import build_for_host
    from segcompile.compile.import_qdq import import_qdq
    from segcompile.compile.integer_lowering import lower_to_integer

    module, _ = lower_to_integer(import_qdq(qdq_onnx))
    return build_for_host(module, out_dir)
