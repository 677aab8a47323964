"""Target profiles: one YAML file per board, describing its cores, quantization constraints and accelerator.

A profile is data only. It is read with ``yaml.safe_load`` and every field is checked here, so a typo in a
user's own profile fails with one line naming the file and the field instead of surfacing later as a
puzzling TVM or compiler error. Nothing found in a profile is ever executed; the cross compiler named in a
core is only looked up on PATH and run as a plain argv (never through a shell).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segcompile.errors import SegcompileError

PROFILES_DIR = Path(__file__).resolve().parents[2] / "target_profiles"

CORE_KINDS = ("arm", "dsp", "host")
# Core names become build-folder entries; these are the stage's own (host/ is the x86 reference build).
RESERVED_CORE_NAMES = ("host", "compile.json")
WEIGHT_GRANULARITIES = ("per-channel", "per-tensor")
ACTIVATION_DTYPES = ("int8", "uint8")
# A profile name becomes a folder and file name: keep it to a safe alphabet.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
# LLVM triples and CPU names: plain identifiers, never anything a shell would interpret.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class CoreSpec:
    """One compute core of a board.

    ``arm``/``host`` cores are compiled with LLVM for ``triple``/``mcpu``/``mattr`` and linked with
    ``cross_compiler``; a ``dsp`` core receives portable C99 kernels built for it by the board's own compiler.
    """

    name: str
    kind: str
    vector_width_bits: int
    triple: str | None = None
    mcpu: str | None = None
    mattr: tuple[str, ...] = ()
    mfloat_abi: str | None = None
    cross_compiler: str | None = None
    board_compiler: str | None = None


@dataclass(frozen=True)
class TargetProfile:
    """A validated target profile (see ``target_profiles/*.yaml``)."""

    name: str
    description: str
    cores: tuple[CoreSpec, ...]
    quantization: dict[str, Any]
    accelerator_ops: tuple[str, ...] = ()
    max_subgraphs: int = 0
    source: str = ""
    content_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_core(self) -> CoreSpec:
        """The core that runs the whole program (and every operator the accelerator does not take)."""
        return next(core for core in self.cores if core.kind in ("arm", "host"))

    @property
    def dsp_core(self) -> CoreSpec | None:
        """The C7x-like accelerator core, if the board has one."""
        return next((core for core in self.cores if core.kind == "dsp"), None)

    def quant_scheme(self):
        """The quantize stage's scheme for this board (``segcompile.quantize.scheme_from_dict``)."""
        from segcompile.quantize import scheme_from_dict

        return scheme_from_dict(dict(self.quantization), source=f"target profile {self.source}: quantization")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view used by ``segcompile targets show --json`` and compile.json."""
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "content_sha256": self.content_sha256,
            "cores": [
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in core.__dict__.items()}
                for core in self.cores
            ],
            "quantization": dict(self.quantization),
            "accelerator_ops": list(self.accelerator_ops),
            "max_subgraphs": self.max_subgraphs,
        }


def list_profiles() -> list[str]:
    """Names of the profiles shipped in ``target_profiles/``."""
    return sorted(path.stem for path in PROFILES_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> TargetProfile:
    """Load a shipped profile by name (``tda4vm``) or a user's profile by path (``my_board.yaml``)."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or "/" in text:
        if not path.is_file():
            raise SegcompileError(f"target profile {text}: no such file")
    else:
        path = PROFILES_DIR / f"{text}.yaml"
        if not path.is_file():
            known = ", ".join(list_profiles())
            raise SegcompileError(
                f"unknown target '{text}' (known: {known}; or pass a path to a profile .yaml)"
            )
    data = path.read_bytes()
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise SegcompileError(f"target profile {path}: not valid YAML ({_one_line(exc)})") from exc
    return parse_profile(raw, source=str(path), content_sha256=hashlib.sha256(data).hexdigest())


def parse_profile(raw: Any, source: str = "profile", content_sha256: str = "") -> TargetProfile:
    """Validate a profile already parsed from YAML; every error names ``source`` and the field at fault."""
    check = _Checker(source)
    if not isinstance(raw, dict):
        raise SegcompileError(f"target profile {source}: expected a mapping at the top level")
    check.unknown_keys(
        raw,
        {"name", "description", "cores", "quantization", "accelerator_ops", "max_subgraphs"},
        "",
    )
    name = check.string(raw, "name", "")
    if not _NAME_RE.match(name):
        check.fail("name", f"'{name}' must be lowercase letters, digits, '-', '_' or '.'")
    description = check.string(raw, "description", "", required=False) or ""

    cores_raw = raw.get("cores")
    if not isinstance(cores_raw, list) or not cores_raw:
        check.fail("cores", "must be a non-empty list of cores")
    cores = tuple(_parse_core(check, core, f"cores[{index}]") for index, core in enumerate(cores_raw))
    names = [core.name for core in cores]
    if len(set(names)) != len(names):
        check.fail("cores", f"core names must be unique, got {names}")
    if not any(core.kind in ("arm", "host") for core in cores):
        check.fail(
            "cores", "needs at least one core of kind arm or host (it runs what the accelerator cannot)"
        )
    if sum(core.kind == "dsp" for core in cores) > 1:
        check.fail("cores", "at most one dsp core is supported")

    quantization = _parse_quantization(check, raw.get("quantization"))

    has_dsp = any(core.kind == "dsp" for core in cores)
    ops_raw = raw.get("accelerator_ops", [])
    if ops_raw is None:
        ops_raw = []
    if not isinstance(ops_raw, list) or not all(
        isinstance(op, str) and _TOKEN_RE.match(op) for op in ops_raw
    ):
        check.fail(
            "accelerator_ops", "must be a list of operator names (ONNX names like Conv, or relax.<op>)"
        )
    if has_dsp and not ops_raw:
        check.fail("accelerator_ops", "a profile with a dsp core must list the operators the dsp accepts")
    if ops_raw and not has_dsp:
        check.fail("accelerator_ops", "is only meaningful for a profile with a dsp core")
    from segcompile.compile.dsp_partition import unknown_operator_names

    unknown = unknown_operator_names(ops_raw)
    if unknown:
        check.fail("accelerator_ops", f"unknown operator(s) {unknown}")

    max_subgraphs = raw.get("max_subgraphs", 0 if not has_dsp else None)
    if has_dsp:
        if isinstance(max_subgraphs, bool) or not isinstance(max_subgraphs, int) or max_subgraphs < 1:
            check.fail(
                "max_subgraphs",
                f"must be an integer >= 1 for a profile with a dsp core, got {max_subgraphs!r}",
            )
    elif max_subgraphs not in (0, None):
        check.fail("max_subgraphs", "is only meaningful for a profile with a dsp core")

    return TargetProfile(
        name=name,
        description=description,
        cores=cores,
        quantization=quantization,
        accelerator_ops=tuple(ops_raw),
        max_subgraphs=int(max_subgraphs or 0),
        source=source,
        content_sha256=content_sha256,
    )


def _parse_core(check: _Checker, raw: Any, where: str) -> CoreSpec:
    if not isinstance(raw, dict):
        check.fail(where, "must be a mapping")
    check.unknown_keys(
        raw,
        {
            "name",
            "kind",
            "triple",
            "mcpu",
            "mattr",
            "mfloat_abi",
            "cross_compiler",
            "board_compiler",
            "vector_width_bits",
        },
        where,
    )
    name = check.string(raw, "name", where)
    if not _NAME_RE.match(name):
        check.fail(f"{where}.name", f"'{name}' must be lowercase letters, digits, '-', '_' or '.'")
    if name in RESERVED_CORE_NAMES:
        check.fail(
            f"{where}.name",
            f"'{name}' is reserved for a build-folder entry ({', '.join(RESERVED_CORE_NAMES)})",
        )
    kind = check.string(raw, "kind", where)
    if kind not in CORE_KINDS:
        check.fail(f"{where}.kind", f"must be one of {', '.join(CORE_KINDS)}, got '{kind}'")
    width = raw.get("vector_width_bits")
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0 or width % 32:
        check.fail(f"{where}.vector_width_bits", f"must be a positive multiple of 32, got {width!r}")

    compiled_with_llvm = kind in ("arm", "host")
    triple = check.token(raw, "triple", where, required=compiled_with_llvm)
    mcpu = check.token(raw, "mcpu", where, required=compiled_with_llvm)
    cross_compiler = check.token(raw, "cross_compiler", where, required=compiled_with_llvm)
    board_compiler = check.token(raw, "board_compiler", where, required=False)
    mattr_raw = raw.get("mattr", [])
    if mattr_raw is None:
        mattr_raw = []
    if not isinstance(mattr_raw, list) or not all(
        isinstance(a, str) and a[:1] in "+-" and _TOKEN_RE.match(a) for a in mattr_raw
    ):
        check.fail(f"{where}.mattr", f"must be a list of LLVM features like '+neon', got {mattr_raw!r}")
    mfloat_abi = raw.get("mfloat_abi")
    if mfloat_abi not in (None, "hard", "soft", "softfp"):
        check.fail(f"{where}.mfloat_abi", f"must be hard, soft or softfp, got {mfloat_abi!r}")
    if not compiled_with_llvm:
        for key in ("triple", "mcpu", "cross_compiler", "mfloat_abi"):
            if raw.get(key) is not None:
                check.fail(
                    f"{where}.{key}", "a dsp core gets portable C kernels; it takes no LLVM/cross settings"
                )
        if mattr_raw:
            check.fail(f"{where}.mattr", "a dsp core gets portable C kernels; it takes no LLVM features")
    if triple is not None:
        from segcompile.compile.targets import SUPPORTED_TRIPLES

        if triple not in SUPPORTED_TRIPLES:
            check.fail(f"{where}.triple", f"'{triple}' is not one of {', '.join(SUPPORTED_TRIPLES)}")
        if triple.startswith("arm-") and triple.endswith("hf") and mfloat_abi != "hard":
            check.fail(f"{where}.mfloat_abi", f"triple {triple} is hard-float: set mfloat_abi: hard")
    return CoreSpec(
        name=name,
        kind=kind,
        vector_width_bits=width,
        triple=triple,
        mcpu=mcpu,
        mattr=tuple(mattr_raw),
        mfloat_abi=mfloat_abi,
        cross_compiler=cross_compiler,
        board_compiler=board_compiler,
    )


def _parse_quantization(check: _Checker, raw: Any) -> dict[str, Any]:
    """Check the ``quantization:`` section, then validate it with the quantize stage's ``scheme_from_dict``.

    Without a ``preset:`` the four keys that define the integer kernels are required, so a profile never
    silently inherits a default scheme.
    """
    if not isinstance(raw, dict):
        check.fail(
            "quantization", "must be a mapping (weight_granularity, power_of_2, activation_symmetric, ...)"
        )
    if "preset" not in raw:
        _check_scheme_keys(check, raw)
    from segcompile.quantize import scheme_from_dict

    scheme_from_dict(dict(raw), source=f"target profile {check.source}: field 'quantization'")
    return dict(raw)


def _check_scheme_keys(check: _Checker, raw: dict) -> None:
    granularity = raw.get("weight_granularity")
    if granularity not in WEIGHT_GRANULARITIES:
        check.fail(
            "quantization.weight_granularity",
            f"must be one of {', '.join(WEIGHT_GRANULARITIES)}, got {granularity!r}",
        )
    for key in ("power_of_2", "activation_symmetric"):
        if not isinstance(raw.get(key), bool):
            check.fail(f"quantization.{key}", f"must be true or false, got {raw.get(key)!r}")
    dtype = raw.get("activation_dtype")
    if dtype not in ACTIVATION_DTYPES:
        check.fail(
            "quantization.activation_dtype", f"must be one of {', '.join(ACTIVATION_DTYPES)}, got {dtype!r}"
        )
    if dtype == "uint8" and raw.get("activation_symmetric"):
        check.fail("quantization.activation_dtype", "uint8 activations need activation_symmetric: false")


class _Checker:
    """Builds the one-line errors; every message starts with the profile file and the field path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field_path: str, message: str):
        where = f" field '{field_path}'" if field_path else ""
        raise SegcompileError(f"target profile {self.source}:{where} {message}")

    def unknown_keys(self, raw: dict, allowed: set[str], where: str) -> None:
        extra = sorted(str(key) for key in raw if key not in allowed)
        if extra:
            prefix = f"{where}." if where else ""
            self.fail(f"{prefix}{extra[0]}", f"unknown field (allowed: {', '.join(sorted(allowed))})")

    def string(self, raw: dict, key: str, where: str, required: bool = True) -> str | None:
        value = raw.get(key)
        path = f"{where}.{key}" if where else key
        if value is None:
            if required:
                self.fail(path, "is required")
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(path, f"must be a non-empty string, got {value!r}")
        return value

    def token(self, raw: dict, key: str, where: str, required: bool) -> str | None:
        value = self.string(raw, key, where, required=required)
        if value is not None and not _TOKEN_RE.match(value):
            self.fail(
                f"{where}.{key}", f"'{value}' must be a single word (letters, digits, '_', '.', '+', '-')"
            )
        return value


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
