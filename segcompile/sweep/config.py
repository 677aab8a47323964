"""sweep.yaml: which models, targets and calibration methods a sweep builds, on which data.

The file is data only (``yaml.safe_load``). Every problem is a :class:`SegcompileError` that names the
file and the key at fault, e.g. ``sweep.yaml: models[1].input_size: expected WIDTHxHEIGHT``::

    models:                      # zoo names (segcompile models list)
      - demo_mobilenetv2s16_deeplabv3lite_160x128
      - name: cityscapes_mobilenetv2_unetlite_768x384
        input_size: 384x192      # optional: export size (default: the zoo entry's)
        checkpoint: ckpt/unet.pt # optional: weights (default: the bundled ones, else seeded random)
        label: unet-small        # optional: the row/folder name (default: name[@WxH])
        calib: cityscapes:/data/cityscapes   # optional: this model's own data (its dataset's classes)
        eval: cityscapes:/data/cityscapes
    targets: [tda4vm, am62a, host]          # profile names or paths to profile YAMLs
    methods:                                # calibration methods (default: [minmax])
      - minmax
      - {method: percentile, scheme: per-channel, bias_correction: false, label: pct-pc}
    calib: {data: demo:calib, frames: 32}
    eval: {data: demo:eval, frames: 96, shard_size: 32}   # frames: omit for every held-out frame
    seed: 0
    out: sweeps/demo                         # optional here; `segcompile sweep --out` overrides it

Relative paths (``out``, ``checkpoint``, folders in data specs) are relative to the current directory,
as for ``segcompile build``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from segcompile.errors import SegcompileError

DEFAULT_CALIB_FRAMES = 32
DEFAULT_SHARD_SIZE = 32
TOP_KEYS = ("models", "targets", "methods", "calib", "eval", "seed", "out")
MODEL_KEYS = ("name", "input_size", "checkpoint", "label", "calib", "eval")
METHOD_KEYS = ("method", "scheme", "bias_correction", "label")
CALIB_KEYS = ("data", "frames")
EVAL_KEYS = ("data", "frames", "shard_size")
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
# Labels name folders: keep them to characters every file system takes.
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")


@dataclass(frozen=True)
class ModelSpec:
    """One model row group: a zoo entry, optionally at another size, with other weights or data."""

    name: str  # the zoo entry's canonical name
    label: str
    input_size: tuple[int, int] | None = None  # (width, height)
    checkpoint: Path | None = None
    calib: str | None = None  # overrides SweepConfig.calib.data for this model
    eval: str | None = None  # overrides SweepConfig.eval.data for this model


@dataclass(frozen=True)
class TargetSpec:
    """A target profile as the file names it, with the profile's own name and content hash."""

    spec: str
    label: str
    content_sha256: str


@dataclass(frozen=True)
class MethodSpec:
    """How a build calibrates: activation range method, optional scheme override, bias correction."""

    method: str
    label: str
    scheme: str | None = None  # None: the target profile's scheme
    bias_correction: bool = True


@dataclass(frozen=True)
class CalibData:
    """Calibration frames: a dataset spec and how many of its frames (first N) to use."""

    data: str
    frames: int = DEFAULT_CALIB_FRAMES


@dataclass(frozen=True)
class EvalData:
    """Evaluation frames (disjoint from calibration) and the shard size of the parallel evaluation."""

    data: str
    frames: int | None = None  # None: every held-out frame
    shard_size: int = DEFAULT_SHARD_SIZE


@dataclass(frozen=True)
class SweepConfig:
    """A parsed sweep.yaml."""

    source: str
    models: tuple[ModelSpec, ...]
    targets: tuple[TargetSpec, ...]
    methods: tuple[MethodSpec, ...]
    calib: CalibData
    eval: EvalData
    seed: int = 0
    out: Path | None = None


def load_sweep(path: Path | str) -> SweepConfig:
    """Read and check a sweep.yaml (see the module docstring for its keys)."""
    path = Path(path)
    if not path.is_file():
        raise SegcompileError(f"{path}: sweep file not found")
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SegcompileError(f"{path}: not readable as YAML ({_one_line(exc)})") from exc
    return parse_sweep(content, str(path))


def parse_sweep(content: Any, source: str = "sweep.yaml") -> SweepConfig:
    """Check the content of a sweep file (already parsed YAML); ``source`` names it in errors."""
    if not isinstance(content, dict):
        raise SegcompileError(f"{source}: expected a mapping with the keys {', '.join(TOP_KEYS)}")
    _no_unknown_keys(content, TOP_KEYS, source, "")
    for key in ("models", "targets", "calib", "eval"):
        if key not in content:
            raise SegcompileError(f"{source}: {key}: missing (required)")
    models = tuple(
        _model(item, source, f"models[{i}]") for i, item in enumerate(_list(content, "models", source))
    )
    targets = tuple(
        _target(item, source, f"targets[{i}]") for i, item in enumerate(_list(content, "targets", source))
    )
    raw_methods = content.get("methods", ["minmax"])
    methods = tuple(
        _method(item, source, f"methods[{i}]")
        for i, item in enumerate(_list({"methods": raw_methods}, "methods", source))
    )
    _unique([m.label for m in models], source, "models")
    _unique([t.label for t in targets], source, "targets")
    _unique([m.label for m in methods], source, "methods")
    calib = _section(content["calib"], source, "calib", CALIB_KEYS)
    evaluation = _section(content["eval"], source, "eval", EVAL_KEYS)
    out = content.get("out")
    if out is not None and (not isinstance(out, str) or not out.strip()):
        raise SegcompileError(f"{source}: out: expected a folder path, got {out!r}")
    return SweepConfig(
        source=source,
        models=models,
        targets=targets,
        methods=methods,
        calib=CalibData(
            data=_spec(calib.get("data"), source, "calib.data"),
            frames=_count(calib.get("frames", DEFAULT_CALIB_FRAMES), source, "calib.frames"),
        ),
        eval=EvalData(
            data=_spec(evaluation.get("data"), source, "eval.data"),
            frames=None
            if evaluation.get("frames") is None
            else _count(evaluation["frames"], source, "eval.frames"),
            shard_size=_count(evaluation.get("shard_size", DEFAULT_SHARD_SIZE), source, "eval.shard_size"),
        ),
        seed=_integer(content.get("seed", 0), source, "seed"),
        out=Path(out).expanduser().absolute() if out else None,
    )


def _model(item: Any, source: str, key: str) -> ModelSpec:
    from segcompile.zoo.registry import get_entry

    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict):
        raise SegcompileError(f"{source}: {key}: expected a zoo name or a mapping with a name, got {item!r}")
    _no_unknown_keys(item, MODEL_KEYS, source, key)
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SegcompileError(f"{source}: {key}.name: expected a zoo model name (segcompile models list)")
    try:
        entry = get_entry(name)
    except SegcompileError as exc:
        raise SegcompileError(f"{source}: {key}.name: {exc}") from exc
    size = (
        _size(item["input_size"], source, f"{key}.input_size") if item.get("input_size") is not None else None
    )
    checkpoint = None
    if item.get("checkpoint") is not None:
        if not isinstance(item["checkpoint"], str):
            raise SegcompileError(
                f"{source}: {key}.checkpoint: expected a file path, got {item['checkpoint']!r}"
            )
        checkpoint = Path(item["checkpoint"]).expanduser().absolute()
        if not checkpoint.is_file():
            raise SegcompileError(f"{source}: {key}.checkpoint: {checkpoint}: no such file")
    default_label = entry.name + (f"@{size[0]}x{size[1]}" if size else "")
    return ModelSpec(
        name=entry.name,
        label=_label(item.get("label", default_label), source, f"{key}.label"),
        input_size=size,
        checkpoint=checkpoint,
        calib=_spec(item["calib"], source, f"{key}.calib") if "calib" in item else None,
        eval=_spec(item["eval"], source, f"{key}.eval") if "eval" in item else None,
    )


def _target(item: Any, source: str, key: str) -> TargetSpec:
    from segcompile.compile.profiles import load_profile

    if not isinstance(item, str) or not item.strip():
        raise SegcompileError(
            f"{source}: {key}: expected a target profile name or a path to one, got {item!r}"
        )
    try:
        profile = load_profile(item.strip())
    except SegcompileError as exc:
        raise SegcompileError(f"{source}: {key}: {exc}") from exc
    return TargetSpec(
        spec=item.strip(), label=_label(profile.name, source, key), content_sha256=profile.content_sha256
    )


def _method(item: Any, source: str, key: str) -> MethodSpec:
    from segcompile.quantize.observers import METHODS
    from segcompile.quantize.scheme import PRESETS

    if isinstance(item, str):
        item = {"method": item}
    if not isinstance(item, dict):
        raise SegcompileError(
            f"{source}: {key}: expected a method name or a mapping with a method, got {item!r}"
        )
    _no_unknown_keys(item, METHOD_KEYS, source, key)
    method = item.get("method")
    if method not in METHODS:
        raise SegcompileError(f"{source}: {key}.method: {method!r} is not one of {', '.join(METHODS)}")
    scheme = item.get("scheme")
    if scheme is not None and scheme not in PRESETS:
        raise SegcompileError(f"{source}: {key}.scheme: {scheme!r} is not one of {', '.join(PRESETS)}")
    bias_correction = item.get("bias_correction", True)
    if not isinstance(bias_correction, bool):
        raise SegcompileError(
            f"{source}: {key}.bias_correction: expected true or false, got {bias_correction!r}"
        )
    default_label = method + (f"+{scheme}" if scheme else "") + ("" if bias_correction else "-nobc")
    return MethodSpec(
        method=method,
        label=_label(item.get("label", default_label), source, f"{key}.label"),
        scheme=scheme,
        bias_correction=bias_correction,
    )


def _list(content: dict, key: str, source: str) -> list:
    value = content.get(key)
    if not isinstance(value, list) or not value:
        raise SegcompileError(f"{source}: {key}: expected a non-empty list, got {value!r}")
    return value


def _section(value: Any, source: str, key: str, allowed: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise SegcompileError(
            f"{source}: {key}: expected a mapping with the keys {', '.join(allowed)}, got {value!r}"
        )
    _no_unknown_keys(value, allowed, source, key)
    if "data" not in value:
        raise SegcompileError(f"{source}: {key}.data: missing (a dataset spec, e.g. demo:{key})")
    return value


def _no_unknown_keys(mapping: dict, allowed: tuple[str, ...], source: str, where: str) -> None:
    for key in mapping:
        if key not in allowed:
            place = f"{where}.{key}" if where else str(key)
            raise SegcompileError(f"{source}: {place}: unknown key (allowed: {', '.join(allowed)})")


def _spec(value: Any, source: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SegcompileError(f"{source}: {key}: expected a dataset spec such as demo:eval, got {value!r}")
    return value.strip()


def _integer(value: Any, source: str, key: str) -> int:
    # YAML's true/false are ints to Python; a flag where a number belongs is a mistake worth naming.
    if isinstance(value, bool) or not isinstance(value, int):
        raise SegcompileError(f"{source}: {key}: expected an integer, got {value!r}")
    return value


def _count(value: Any, source: str, key: str) -> int:
    value = _integer(value, source, key)
    if value < 1:
        raise SegcompileError(f"{source}: {key}: must be at least 1, got {value}")
    return value


def _size(value: Any, source: str, key: str) -> tuple[int, int]:
    if isinstance(value, list) and len(value) == 2:
        width, height = (_count(v, source, key) for v in value)
        return width, height
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise SegcompileError(
            f"{source}: {key}: expected WIDTHxHEIGHT (e.g. 96x64) or [width, height], got {value!r}"
        )
    width, height = int(match.group(1)), int(match.group(2))
    if width < 1 or height < 1:
        raise SegcompileError(f"{source}: {key}: width and height must be positive, got {value!r}")
    return width, height


def _label(value: Any, source: str, key: str) -> str:
    if not isinstance(value, str) or not _LABEL.match(value):
        raise SegcompileError(
            f"{source}: {key}: {value!r} cannot name a folder (letters, digits and . _ @ + - only)"
        )
    return value


def _unique(labels: list[str], source: str, key: str) -> None:
    seen: dict[str, int] = {}
    for index, label in enumerate(labels):
        if label in seen:
            raise SegcompileError(
                f"{source}: {key}[{index}]: same row name {label!r} as {key}[{seen[label]}] "
                "(give one of them a label)"
            )
        seen[label] = index


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
