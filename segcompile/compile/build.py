"""Per-core builds: LLVM code for the core's triple/CPU, cross-linked by Debian's cross gcc into one .so.

The library is checked after linking: its ELF header must name the machine the core is (e_machine), so a
wrong compiler or triple can never ship a library that merely looks right.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from pathlib import Path

from segcompile.artifacts import atomic_path
from segcompile.compile.profiles import CoreSpec
from segcompile.compile.targets import find_cross_compiler, triple_info, tvm_target
from segcompile.errors import SegcompileError

LIBRARY_NAME = "model.so"


@dataclass(frozen=True)
class CoreBuild:
    """What one arm/host core build produced."""

    core: str
    kind: str
    target: dict
    library: Path
    size_bytes: int
    elf_machine: int
    elf_machine_name: str
    seconds: float


@dataclass(frozen=True)
class ElfHeader:
    """The few ELF header fields we check."""

    elf_class: int  # 1 = 32-bit, 2 = 64-bit
    little_endian: bool
    machine: int


def read_elf_header(path: Path | str) -> ElfHeader:
    """Parse the ELF identification and e_machine of ``path`` (a SegcompileError if it is no ELF file)."""
    with open(path, "rb") as handle:
        head = handle.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise SegcompileError(f"{path}: not an ELF file")
    elf_class, data = head[4], head[5]
    little = data == 1
    # e_machine is the 16-bit field at offset 18 in both ELF32 and ELF64 headers.
    (machine,) = struct.unpack("<H" if little else ">H", head[18:20])
    return ElfHeader(elf_class=elf_class, little_endian=little, machine=machine)


def check_elf_machine(path: Path | str, core: CoreSpec) -> ElfHeader:
    """Fail unless ``path`` is an ELF shared object for ``core``'s triple."""
    info = triple_info(core)
    header = read_elf_header(path)
    if header.machine != info.elf_machine or header.elf_class != info.elf_class:
        raise SegcompileError(
            f"{path}: ELF machine {header.machine} (class {header.elf_class}) but core '{core.name}' "
            f"({core.triple}) needs machine {info.elf_machine} (class {info.elf_class})"
        )
    return header


def compile_relax(mod, core: CoreSpec, database=None):
    """Compile a Relax module for an arm/host core with TVM's fused CPU pipeline (a VM executable).

    Kernels get the schedules of ``database`` (a MetaSchedule database, see tuning.py) where it has them
    and the hand-written CPU schedules (cpu_schedules.py) elsewhere.
    """
    import tvm
    import tvm.relax.backend.cpu_generic  # noqa: F401  (registers the CPU pipeline)

    from segcompile.compile.tuning import tuned_pipeline

    target = tvm_target(core)
    # The default `tvm.compile` pipeline does no operator fusion on CPU; cpu_generic's does.
    pipeline = tuned_pipeline(target, database)
    try:
        return tvm.compile(mod, target=target, relax_pipeline=pipeline)
    except Exception as exc:  # TVM's errors are its own types; name the core that failed
        raise SegcompileError(
            f"core '{core.name}': TVM failed to build for {core.triple}: {str(exc).strip().splitlines()[-1]}"
        ) from exc


def build_core(mod, core: CoreSpec, out_dir: Path | str, database=None) -> CoreBuild:
    """Build ``mod`` for an arm/host ``core`` into ``out_dir/model.so`` atomically; check its ELF machine."""
    from tvm.support import cc

    if core.kind not in ("arm", "host"):
        raise SegcompileError(f"core '{core.name}': kind {core.kind} is not built with LLVM")
    started = time.perf_counter()
    compiler = find_cross_compiler(core)
    executable = compile_relax(mod, core, database)
    final = Path(out_dir) / LIBRARY_NAME
    with atomic_path(final) as temp:
        try:
            executable.export_library(str(temp), fcompile=cc.cross_compiler(compiler))
        except Exception as exc:
            message = str(exc).strip().splitlines()
            raise SegcompileError(
                f"core '{core.name}': linking with {compiler} failed: {' | '.join(message[-3:])}"
            ) from exc
        header = check_elf_machine(temp, core)
    info = triple_info(core)
    return CoreBuild(
        core=core.name,
        kind=core.kind,
        target=_target_summary(core),
        library=final,
        size_bytes=final.stat().st_size,
        elf_machine=header.machine,
        elf_machine_name=info.machine_name,
        seconds=round(time.perf_counter() - started, 3),
    )


def _target_summary(core: CoreSpec) -> dict:
    from segcompile.compile.targets import target_dict

    return target_dict(core)
