"""The compile stage: QDQ ONNX -> integer Relax program -> one build per core of the target board.

Build folder entries written here::

    host/model.so        x86_64 reference build of the integer program (what verify runs)
    <cpu core>/model.so  the board's ARM (or host) core: LLVM for its triple/CPU, cross-linked, ELF checked;
                         on a DSP board, main calls the DSP subgraphs as functions dsp_subgraph_<k>
    <dsp core>/...       DSP subgraphs as portable C99 (see c_kernels.py), checked against the LLVM build
    compile.json         what was built, written last

``compile.json`` is removed first and written last, and every folder is assembled under a temporary name
and renamed into place, so a failed build never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segcompile import __version__
from segcompile.artifacts import atomic_path, sha256_file, write_json_atomic
from segcompile.compile.build import CoreBuild, build_core
from segcompile.compile.c_kernels import DspSources, HostDspLibrary, compile_dsp_sources, emit_dsp_sources
from segcompile.compile.dsp_partition import (
    PartitionPlan,
    partition_for_dsp,
    relax_op_counts,
    subgraph_module,
)
from segcompile.compile.profiles import TargetProfile, load_profile
from segcompile.compile.targets import target_dict
from segcompile.errors import SegcompileError

COMPILE_JSON = "compile.json"
HOST_DIR = "host"


@dataclass(frozen=True)
class CompileConfig:
    """Options of the compile stage."""

    # Compile the DSP C with the host gcc and compare it with TVM's LLVM build of the same subgraphs.
    check_dsp_c: bool = True
    # Seed of the random inputs of that check (each subgraph is checked on its own, so inputs are synthetic).
    seed: int = 0
    # Also write the x86_64 reference build (host/model.so) that the verify stage runs.
    host_reference: bool = True


@dataclass(frozen=True)
class DspCheck:
    """Result of running the shipped DSP C (host-compiled) against TVM's LLVM build of the same subgraphs."""

    compiler: str
    subgraphs: int
    elements: int
    mismatches: int
    max_abs_diff: float

    @property
    def bit_exact(self) -> bool:
        return self.mismatches == 0


@dataclass(frozen=True)
class CompileResult:
    """What :func:`run_compile` produced."""

    out_dir: Path
    profile: TargetProfile
    cores: tuple[CoreBuild, ...]
    host_library: Path | None
    lowering: Any  # segcompile.compile.LoweringReport
    op_counts: dict[str, int] = field(default_factory=dict)  # Relax operators of the integer program
    partition: PartitionPlan | None = None
    dsp_sources: DspSources | None = None
    dsp_check: DspCheck | None = None
    seconds: float = 0.0
    compile_json: Path = field(default_factory=Path)

    def library(self, core: str) -> Path:
        """The built library of ``core``."""
        for build in self.cores:
            if build.core == core:
                return build.library
        raise KeyError(core)


def run_compile(
    config: CompileConfig,
    qdq_onnx: Path | str,
    profile: TargetProfile | str | Path,
    out_dir: Path | str,
) -> CompileResult:
    """Lower ``qdq_onnx`` to an integer program; build it for every core of ``profile`` into ``out_dir``."""
    # Import the functions from their modules: `segcompile.compile.import_qdq` is also a submodule name.
    from segcompile.compile.host_runtime import build_for_host
    from segcompile.compile.import_qdq import import_qdq
    from segcompile.compile.integer_lowering import lower_to_integer
    from segcompile.compile.tuning import database_for_core

    started = time.perf_counter()
    if not isinstance(profile, TargetProfile):
        profile = load_profile(profile)
    qdq_onnx = Path(qdq_onnx)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The completeness marker goes first: a half-rebuilt folder must not keep an old compile.json.
    (out_dir / COMPILE_JSON).unlink(missing_ok=True)

    qdq = import_qdq(qdq_onnx)
    mod, lowering = lower_to_integer(qdq)

    partition = sources = check = None
    partitioned = mod
    dsp = profile.dsp_core
    if dsp is not None:
        partitioned, partition = partition_for_dsp(mod, profile.accelerator_ops, profile.max_subgraphs)
        if not partition.subgraphs:
            # Nothing the DSP takes: the ARM core runs everything, no DSP folder (compile.json says so).
            shutil.rmtree(out_dir / dsp.name, ignore_errors=True)

    # The CPU library is the partitioned program: main runs the ARM part and calls each DSP subgraph as the
    # function dsp_subgraph_<k> (the hand-off points of TI's flow). Their LLVM code is in the library too,
    # so it also runs stand-alone, e.g. under qemu; the C in the dsp folder computes the same bits.
    builds = []
    for core in profile.cores:
        if core.kind == "dsp":
            continue
        with atomic_path(out_dir / core.name) as temp:
            database = database_for_core(profile.name, qdq_onnx, qdq.input_shape, core)
            built = build_core(partitioned, core, temp, database=database)
        builds.append(_moved(built, out_dir / core.name))

    host_library = None
    if config.host_reference:
        # A profile whose CPU core is this machine's (x86_64, no DSP hand-off) already built the very
        # program the host reference is: copy it rather than compile it a second time.
        same_program = next((b for b in builds if b.kind == "host" and b.elf_machine_name == "x86_64"), None)
        with atomic_path(out_dir / HOST_DIR) as temp:
            if same_program is not None and dsp is None:
                temp.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(same_program.library, temp / "model.so")
            else:
                build_for_host(mod, temp)
        host_library = out_dir / HOST_DIR / "model.so"

    if dsp is not None and partition.subgraphs:
        with atomic_path(out_dir / dsp.name) as temp:
            sources = emit_dsp_sources(partitioned, temp)
            if config.check_dsp_c:
                check = check_dsp_sources(partitioned, sources, temp, profile, seed=config.seed)
                if not check.bit_exact:
                    raise SegcompileError(
                        f"{out_dir / dsp.name}: the DSP C kernels disagree with TVM's LLVM build on "
                        f"{check.mismatches} of {check.elements} elements (max |diff| {check.max_abs_diff})"
                    )
        sources = DspSources(
            out_dir / dsp.name, sources.files, sources.kernels, sources.subgraphs, sources.constant_bytes
        )

    seconds = round(time.perf_counter() - started, 3)
    result = CompileResult(
        out_dir=out_dir,
        profile=profile,
        cores=tuple(builds),
        host_library=host_library,
        lowering=lowering,
        op_counts=relax_op_counts(mod),
        partition=partition,
        dsp_sources=sources,
        dsp_check=check,
        seconds=seconds,
        compile_json=out_dir / COMPILE_JSON,
    )
    write_json_atomic(out_dir / COMPILE_JSON, compile_summary(result, qdq_onnx, qdq.input_shape, config))
    return result


def check_dsp_sources(
    partitioned_mod,
    sources: DspSources,
    src_dir: Path,
    profile: TargetProfile,
    seed: int = 0,
    compiler: str = "gcc",
) -> DspCheck:
    """Compile the shipped C with the host compiler and run each subgraph against TVM's host LLVM build.

    Each subgraph is a function of its own, so it is fed seeded synthetic inputs over the full range of its
    dtypes (int8 activations: every value -128..127 can occur).
    """
    import tvm
    from tvm import relax

    from segcompile.compile.host_runtime import compile_relax as compile_for_host
    from segcompile.compile.host_runtime import host_target

    reference = relax.VirtualMachine(
        compile_for_host(subgraph_module(partitioned_mod), host_target()), tvm.cpu()
    )
    rng = np.random.default_rng(seed)
    elements = mismatches = 0
    max_diff = 0.0
    with tempfile.TemporaryDirectory(prefix="segcompile-dsp-") as tmp:
        library = HostDspLibrary(compile_dsp_sources(src_dir, Path(tmp) / "dsp_host.so", compiler), sources)
        for signature in sources.subgraphs:
            inputs = [_synthetic(rng, spec.shape, spec.dtype) for spec in signature.inputs]
            ours = library(signature.function, inputs)
            theirs = reference[signature.function](*[tvm.runtime.tensor(a) for a in inputs])
            theirs = [theirs.numpy()] if hasattr(theirs, "numpy") else [t.numpy() for t in theirs]
            for a, b in zip(ours, theirs, strict=True):
                elements += a.size
                mismatches += int(np.count_nonzero(a != b))
                if a.size:
                    max_diff = max(
                        max_diff, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                    )
    return DspCheck(
        compiler=compiler,
        subgraphs=len(sources.subgraphs),
        elements=elements,
        mismatches=mismatches,
        max_abs_diff=max_diff,
    )


def compile_is_current(
    config: CompileConfig, qdq_onnx: Path | str, profile: TargetProfile | str | Path, out_dir: Path | str
) -> bool:
    """True when ``out_dir`` holds a finished compile of exactly these inputs, with every file intact.

    Inputs are the model's bytes, the profile's bytes, the options and the TVM/segcompile versions; the
    pipeline uses this to skip a stage whose inputs did not change.
    """
    import tvm

    out_dir = Path(out_dir)
    try:
        summary = json.loads((out_dir / COMPILE_JSON).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(profile, TargetProfile):
        profile = load_profile(profile)
    expected = {
        ("model", "sha256"): sha256_file(qdq_onnx),
        ("profile", "content_sha256"): profile.content_sha256,
    }
    for (section, key), value in expected.items():
        if summary.get(section, {}).get(key) != value:
            return False
    if summary.get("config") != asdict(config) or summary.get("tvm_version") != tvm.__version__:
        return False
    if summary.get("segcompile_version") != __version__:
        return False
    # A profile with mcpu: native means this machine's CPU: a build from a machine with another CPU
    # (a copied folder) is not current here even though the profile's bytes are the same.
    built_targets = {core.get("name"): core.get("target") for core in summary.get("cores", [])}
    for core in profile.cores:
        if core.kind in ("arm", "host") and built_targets.get(core.name) != target_dict(core):
            return False
    entries = [summary["host_reference"]] if "host_reference" in summary else []
    for core in summary.get("cores", []):
        entries += [core["library"]] if "library" in core else []
        entries += core.get("files", [])
    return all(
        (out_dir / e["path"]).is_file() and sha256_file(out_dir / e["path"]) == e["sha256"] for e in entries
    )


def load_host_module(build_dir: Path | str):
    """The x86_64 reference build of a finished compile, as ``callable(np input) -> np logits``."""
    from segcompile.compile.host_runtime import HostModule

    build_dir = Path(build_dir)
    if not (build_dir / COMPILE_JSON).is_file():
        raise SegcompileError(f"{build_dir}: no {COMPILE_JSON} (run `segcompile compile` first)")
    return HostModule(build_dir / HOST_DIR / "model.so")


def compile_summary(result: CompileResult, qdq_onnx: Path, input_shape, config: CompileConfig) -> dict:
    """The content of compile.json."""
    import tvm

    out = result.out_dir
    summary: dict[str, Any] = {
        "model": {"path": str(qdq_onnx), "sha256": sha256_file(qdq_onnx), "input_shape": list(input_shape)},
        "config": asdict(config),
        "segcompile_version": __version__,
        "profile": {
            "name": result.profile.name,
            "source": result.profile.source,
            "content_sha256": result.profile.content_sha256,
        },
        "tvm_version": tvm.__version__,
        "lowering": result.lowering.to_dict(),
        "cores": [],
        "elapsed_seconds": result.seconds,
    }
    if result.host_library is not None:
        summary["host_reference"] = _file_entry(out, result.host_library)
    for build in result.cores:
        summary["cores"].append(
            {
                "name": build.core,
                "kind": build.kind,
                "target": build.target,
                "library": _file_entry(out, build.library),
                "elf_machine": build.elf_machine,
                "elf_machine_name": build.elf_machine_name,
                "seconds": build.seconds,
                "program": (
                    "integer program; main calls the DSP subgraphs dsp_subgraph_<k> (also built in)"
                    if result.dsp_sources is not None
                    else "whole integer program"
                ),
                "op_counts": result.op_counts,
            }
        )
    if result.partition is not None:
        dsp = result.profile.dsp_core
        sources = result.dsp_sources
        entry = {
            "name": dsp.name,
            "kind": "dsp",
            "target": {"kind": "c"},
            "board_compiler": dsp.board_compiler,
            "files": [_file_entry(out, sources.directory / n) for n in sources.files] if sources else [],
            "sources": sources.to_dict() if sources else None,
            "partition": result.partition.to_dict(),
            "max_subgraphs": result.profile.max_subgraphs,
        }
        if result.dsp_check is not None:
            entry["c_check"] = {
                "compiler": result.dsp_check.compiler,
                "subgraphs": result.dsp_check.subgraphs,
                "elements": result.dsp_check.elements,
                "mismatches": result.dsp_check.mismatches,
                "max_abs_diff": result.dsp_check.max_abs_diff,
                "bit_exact": result.dsp_check.bit_exact,
            }
        summary["cores"].append(entry)
    return summary


def _file_entry(root: Path, path: Path) -> dict:
    return {"path": str(path.relative_to(root)), "size": path.stat().st_size, "sha256": sha256_file(path)}


def _moved(build: CoreBuild, final_dir: Path) -> CoreBuild:
    """The same build record, pointing into the folder's final name (it was built under a temporary one)."""
    library = final_dir / build.library.name
    return CoreBuild(
        build.core,
        build.kind,
        build.target,
        library,
        library.stat().st_size,
        build.elf_machine,
        build.elf_machine_name,
        build.seconds,
    )


def _synthetic(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        low, high = max(int(info.min), -(2**15)), min(int(info.max), 2**15 - 1)
        return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
    if dtype == "bool":
        return rng.integers(0, 1, size=shape, endpoint=True).astype(np.bool_)
    return (rng.standard_normal(shape) * 2.0).astype(dtype)
