"""Resolving where the model comes from: a zoo name, a checkpoint, a factory or an ONNX file.

The result is either a :class:`TorchSource` (an ``nn.Module`` in eval mode plus the
:class:`ModelInfo` it will carry) or an :class:`OnnxSource` (a parsed, checker-valid ONNX model).
Checkpoints are only ever read with ``torch.load(weights_only=True)``: a checkpoint is data, and
unpickling arbitrary objects from it would execute code found in the file.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from segcompile.artifacts import sha256_file
from segcompile.errors import SegcompileError
from segcompile.export.config import ExportConfig
from segcompile.export.messages import short_reason
from segcompile.modelinfo import ModelInfo

ONNX_SUFFIXES = (".onnx",)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
_FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


@dataclass(frozen=True)
class Checkpoint:
    """A state dict read from a file, with the optional metadata saved beside it."""

    path: Path
    sha256: str
    state_dict: dict[str, torch.Tensor]
    model_name: str | None = None
    num_classes: int | None = None


@dataclass(frozen=True)
class TorchSource:
    """A torch network ready to export, and the identity it will carry in the ONNX file."""

    module: nn.Module
    info: ModelInfo
    description: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OnnxSource:
    """An existing ONNX model given as input."""

    path: Path
    model: onnx.ModelProto
    description: dict[str, Any] = field(default_factory=dict)


def resolve_source(config: ExportConfig) -> TorchSource | OnnxSource:
    """Turn the ``model`` / ``checkpoint`` / ``factory`` of ``config`` into something exportable."""
    if config.factory:
        return _factory_source(config)
    if not config.model:
        raise SegcompileError(
            "no model given: pass --model NAME|FILE.pt|FILE.onnx or --factory pkg.module:fn"
        )
    kind = classify_model_argument(config.model)
    if kind == "onnx":
        if config.checkpoint:
            raise SegcompileError(
                f"--checkpoint {config.checkpoint}: cannot be combined with an ONNX --model"
            )
        path = Path(config.model)
        return OnnxSource(path=path, model=load_onnx_file(path), description={
            "kind": "onnx", "path": str(path), "sha256": sha256_file(path),
        })
    if kind == "checkpoint":
        if config.checkpoint:
            raise SegcompileError(
                f"--model {config.model} is itself a checkpoint; give --model NAME --checkpoint FILE instead"
            )
        checkpoint = load_checkpoint(config.model)
        if not checkpoint.model_name:
            raise SegcompileError(
                f"{config.model}: the checkpoint does not say which network it holds (no 'model_name' key); "
                "pass the zoo name and the weights separately: --model NAME --checkpoint FILE"
            )
        return _zoo_source(config, checkpoint.model_name, checkpoint)
    checkpoint = load_checkpoint(config.checkpoint) if config.checkpoint else None
    return _zoo_source(config, config.model, checkpoint)


def classify_model_argument(model: str) -> str:
    """Say whether ``--model`` names an ONNX file, a checkpoint file or a zoo entry.

    A value that looks like a file (known suffix or a path separator) must exist; anything else is
    taken as a zoo name, so an unknown name gets the zoo's "did you mean" error.
    """
    path = Path(model)
    suffix = path.suffix.lower()
    looks_like_file = suffix in ONNX_SUFFIXES + CHECKPOINT_SUFFIXES or "/" in model or "\\" in model
    if looks_like_file or path.is_file():
        if not path.exists():
            raise SegcompileError(f"--model {model}: file not found")
        if not path.is_file():
            raise SegcompileError(f"--model {model}: is a directory, expected a .onnx or .pt/.pth file")
        if suffix in ONNX_SUFFIXES:
            return "onnx"
        if suffix in CHECKPOINT_SUFFIXES:
            return "checkpoint"
        raise SegcompileError(
            f"--model {model}: unknown file type {suffix or '(no suffix)'}; expected .onnx or "
            + "/".join(CHECKPOINT_SUFFIXES)
        )
    return "zoo"


def load_onnx_file(path: Path | str) -> onnx.ModelProto:
    """Parse and check an ONNX file; anything unreadable becomes one error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SegcompileError(f"{path}: file not found")
    try:
        # onnx.load also pulls in external weight files that sit beside the model.
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, missing external data, ...: all mean "not usable"
        raise SegcompileError(f"{path}: not a readable ONNX file ({short_reason(exc)})") from exc
    if model.ir_version <= 0 or len(model.graph.node) == 0:
        raise SegcompileError(f"{path}: not an ONNX model (no IR version or no graph nodes)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise SegcompileError(f"{path}: invalid ONNX model ({short_reason(exc)})") from exc
    return model


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Read a state dict with ``torch.load(weights_only=True)``.

    Accepts a bare state dict or a dict holding one under ``state_dict`` or ``model``, optionally
    with ``model_name`` and ``num_classes`` beside it.
    """
    path = Path(path)
    if not path.is_file():
        raise SegcompileError(f"{path}: checkpoint file not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for disallowed objects, RuntimeError for a broken zip
        raise SegcompileError(
            f"{path}: cannot be read as a weights-only checkpoint ({short_reason(exc)})"
        ) from exc
    if not isinstance(raw, Mapping):
        raise SegcompileError(f"{path}: expected a state dict, found a {type(raw).__name__}")
    model_name = num_classes = None
    if _is_state_dict(raw):
        state = raw
    else:
        state = next((raw[key] for key in ("state_dict", "model") if key in raw), None)
        if not isinstance(state, Mapping) or not _is_state_dict(state):
            raise SegcompileError(
                f"{path}: no state dict found; expected a bare state dict or a dict with a "
                f"'state_dict' or 'model' entry (keys: {', '.join(sorted(map(str, raw))[:8])})"
            )
        model_name = raw.get("model_name")
        num_classes = raw.get("num_classes")
        if model_name is not None and not isinstance(model_name, str):
            raise SegcompileError(f"{path}: 'model_name' must be a string, found {type(model_name).__name__}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
            raise SegcompileError(f"{path}: 'num_classes' must be an integer, found {num_classes!r}")
    state = dict(state)
    # Checkpoints saved from nn.DataParallel prefix every key with "module."
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return Checkpoint(path, sha256_file(path), state, model_name, num_classes)


def apply_checkpoint(module: nn.Module, checkpoint: Checkpoint, model_name: str) -> None:
    """Load ``checkpoint`` into ``module`` strictly, explaining any mismatch by parameter name."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(checkpoint.state_dict))
    unexpected = sorted(set(checkpoint.state_dict) - set(expected))
    mismatched = [
        f"{key} {tuple(checkpoint.state_dict[key].shape)} vs {tuple(expected[key].shape)}"
        for key in expected
        if key in checkpoint.state_dict and checkpoint.state_dict[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        problems.append(f"shape mismatch checkpoint vs model: {'; '.join(mismatched[:3])}")
    if problems:
        hint = " (is --num-classes right?)" if mismatched else ""
        raise SegcompileError(
            f"{checkpoint.path}: does not fit {model_name}: {', '.join(problems)}{hint}"
        )
    module.load_state_dict(checkpoint.state_dict, strict=True)


def _zoo_source(config: ExportConfig, name: str, checkpoint: Checkpoint | None) -> TorchSource:
    from segcompile.zoo.registry import build_model, bundled_weights, get_entry

    entry = get_entry(name)
    if checkpoint is None and (shipped := bundled_weights(entry)) is not None:
        checkpoint = load_checkpoint(shipped)
    num_classes = config.num_classes or (checkpoint.num_classes if checkpoint else None) or entry.num_classes
    torch.manual_seed(config.seed)
    module = build_model(entry, num_classes=num_classes, seed=config.seed)
    description: dict[str, Any] = {"kind": "zoo", "zoo_name": entry.name}
    if checkpoint is not None:
        apply_checkpoint(module, checkpoint, entry.name)
        description.update(checkpoint=str(checkpoint.path), checkpoint_sha256=checkpoint.sha256)
    module.eval()
    same_classes = num_classes == entry.num_classes
    class_names = tuple(entry.class_names) if same_classes else _generic_classes(num_classes)
    # The entry knows its own preprocessing; only size and classes may be overridden here.
    info = replace(
        entry.model_info(), num_classes=num_classes, class_names=class_names,
        input_size=tuple(config.input_size or entry.input_size), extra={"dataset": str(entry.dataset)},
    )
    _probe_output(module, info, f"zoo model {entry.name}")
    return TorchSource(module, info, description)


def _factory_source(config: ExportConfig) -> TorchSource:
    spec = config.factory or ""
    if not _FACTORY_PATTERN.match(spec):
        raise SegcompileError(f"--factory {spec}: expected 'package.module:function'")
    if config.input_size is None:
        raise SegcompileError(f"--factory {spec}: also give --input-size WxH (a factory has no default size)")
    module_name, function_name = spec.split(":")
    try:
        # The user named this module explicitly, so importing (and thereby running) it is intended.
        python_module = importlib.import_module(module_name)
    except Exception as exc:
        raise SegcompileError(f"--factory {spec}: cannot import {module_name} ({short_reason(exc)})") from exc
    factory = getattr(python_module, function_name, None)
    if not callable(factory):
        raise SegcompileError(f"--factory {spec}: {module_name} has no function {function_name}")
    kwargs: dict[str, Any] = {}
    if config.num_classes is not None and _accepts_keyword(factory, "num_classes"):
        kwargs["num_classes"] = config.num_classes
    torch.manual_seed(config.seed)
    try:
        module = factory(**kwargs)
    except Exception as exc:
        raise SegcompileError(f"--factory {spec}: the factory failed ({short_reason(exc)})") from exc
    if not isinstance(module, nn.Module):
        raise SegcompileError(f"--factory {spec}: returned a {type(module).__name__}, not a torch.nn.Module")
    description: dict[str, Any] = {"kind": "factory", "factory": spec}
    name = config.model or function_name
    checkpoint = load_checkpoint(config.checkpoint) if config.checkpoint else None
    if checkpoint is not None:
        apply_checkpoint(module, checkpoint, spec)
        description.update(checkpoint=str(checkpoint.path), checkpoint_sha256=checkpoint.sha256)
    module.eval()
    # A factory says nothing about its classes: the output channel count does.
    probe = ModelInfo(name=name, num_classes=0, input_size=tuple(config.input_size))
    channels = _probe_output(module, probe, f"--factory {spec}")
    if config.num_classes is not None and channels != config.num_classes:
        raise SegcompileError(
            f"--factory {spec}: the model outputs {channels} channels "
            f"but --num-classes is {config.num_classes}"
        )
    info = ModelInfo(
        name=name, num_classes=channels, input_size=tuple(config.input_size),
        class_names=_generic_classes(channels),
    )
    return TorchSource(module, info, description)


def _probe_output(module: nn.Module, info: ModelInfo, what: str) -> int:
    """Run one forward pass at the export size; return the output channel count.

    Catching a wrong output here gives a one-line error instead of a deep exporter traceback.
    """
    shape = info.input_shape
    try:
        with torch.no_grad():
            output = module(torch.zeros(shape))
    except Exception as exc:
        width, height = info.input_size
        raise SegcompileError(
            f"{what} cannot run at input size {width}x{height} ({short_reason(exc)}); "
            "zoo networks need a width and height divisible by 32"
        ) from exc
    if not isinstance(output, torch.Tensor):
        raise SegcompileError(
            f"{what}: forward returned a {type(output).__name__}; expected one logits tensor"
        )
    expected = (1, output.shape[1] if output.dim() == 4 else -1, shape[2], shape[3])
    if output.dim() != 4 or tuple(output.shape) != expected:
        raise SegcompileError(
            f"{what}: output shape {tuple(output.shape)}; expected (1, classes, {shape[2]}, {shape[3]}) "
            "logits at the input size"
        )
    if info.num_classes and output.shape[1] != info.num_classes:
        raise SegcompileError(
            f"{what}: outputs {output.shape[1]} channels, expected {info.num_classes} classes"
        )
    return int(output.shape[1])


def _is_state_dict(value: Mapping) -> bool:
    return bool(value) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _accepts_keyword(function: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _generic_classes(count: int) -> tuple[str, ...]:
    return tuple(f"class_{index}" for index in range(count))
