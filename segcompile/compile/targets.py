"""From a profile's core to what TVM and the linker need: target dicts, cross compilers, ELF machines."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

from segcompile.compile.profiles import CoreSpec
from segcompile.errors import SegcompileError


@dataclass(frozen=True)
class TripleInfo:
    """What we know about one LLVM triple: the ELF e_machine it produces and where its compiler comes from."""

    elf_machine: int
    elf_class: int  # 1 = ELF32, 2 = ELF64
    machine_name: str
    apt_package: str


# e_machine values from the ELF specification (EM_X86_64 = 62, EM_ARM = 40, EM_AARCH64 = 183).
SUPPORTED_TRIPLES: dict[str, TripleInfo] = {
    "x86_64-linux-gnu": TripleInfo(62, 2, "x86_64", "gcc"),
    "aarch64-linux-gnu": TripleInfo(183, 2, "aarch64", "gcc-aarch64-linux-gnu"),
    "arm-linux-gnueabihf": TripleInfo(40, 1, "arm", "gcc-arm-linux-gnueabihf"),
}

# A profile's mcpu that means "the CPU of the machine doing the build" (the host profile).
NATIVE_CPU = "native"

# The DSP gets C from TVM's 'c' target; the C is plain C99 with no CPU-specific code.
C_TARGET: dict[str, Any] = {"kind": "c"}


def target_dict(core: CoreSpec) -> dict[str, Any]:
    """The TVM target (a JSON dict; TVM 0.27 rejects target strings) for an arm/host core."""
    if core.kind == "dsp":
        return dict(C_TARGET)
    target: dict[str, Any] = {"kind": "llvm", "mtriple": core.triple, "mcpu": resolve_mcpu(core.mcpu)}
    if core.mattr:
        target["mattr"] = list(core.mattr)
    if core.mfloat_abi:
        # Without it an armv7 hard-float link fails with "uses VFP register arguments".
        target["mfloat-abi"] = core.mfloat_abi
    return target


def resolve_mcpu(mcpu: str | None) -> str | None:
    """``native`` -> the build machine's CPU as LLVM names it (e.g. ``znver4``); other names unchanged.

    The name, not ``native``, goes into the target, compile.json and the tuning key, so a build says
    which CPU its code needs and a tuning database is never applied to a different CPU.
    """
    if mcpu != NATIVE_CPU:
        return mcpu
    import tvm.target.codegen

    return str(tvm.target.codegen.llvm_get_system_cpu())


def tvm_target(core: CoreSpec):
    """``tvm.target.Target`` for ``core``; a bad mcpu/mattr is reported against the core."""
    import tvm

    try:
        return tvm.target.Target(target_dict(core))
    except Exception as exc:  # TVM raises its own error types for bad target attributes
        raise SegcompileError(f"core '{core.name}': TVM rejects target {target_dict(core)}: {exc}") from exc


def triple_info(core: CoreSpec) -> TripleInfo:
    """The :class:`TripleInfo` of an arm/host core."""
    try:
        return SUPPORTED_TRIPLES[core.triple or ""]
    except KeyError:
        raise SegcompileError(f"core '{core.name}': unsupported triple {core.triple!r}") from None


def find_cross_compiler(core: CoreSpec) -> str:
    """Absolute path of the core's cross compiler, or an error saying which Debian package provides it."""
    command = core.cross_compiler or "gcc"
    found = shutil.which(command)
    if found is None:
        package = triple_info(core).apt_package
        raise SegcompileError(
            f"core '{core.name}': cross compiler '{command}' not found on PATH "
            f"(Debian/Ubuntu: apt-get install {package}; or run scripts/setup-aarch64-sysroot.sh)"
        )
    return found
