"""Run an aarch64 build on this x86_64 machine under qemu-user: does it compute what the host build does?

The sysroot (Debian's arm64 python3.11 + libc, and the aarch64 wheels of TVM and numpy) is prepared once by
``scripts/setup-aarch64-sysroot.sh`` and cached under ``.cache/aarch64`` in the repository. A small runner
script executes inside qemu with that python; arrays cross the boundary as ``.npy`` files. qemu's timings
say nothing about the board, so none are reported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segcompile.errors import SegcompileError

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup-aarch64-sysroot.sh"

# Runs inside qemu with the arm64 python: load the library, run one VM function, save the outputs.
_RUNNER = r"""
import sys
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

library, function, workdir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
executable = tvm.runtime.load_module(library)
vm = relax.VirtualMachine(executable, tvm.cpu())
inputs = [np.load(path) for path in sorted(workdir.glob("in_*.npy"))]
result = vm[function](*[tvm.runtime.tensor(a) for a in inputs])
outputs = [result] if hasattr(result, "numpy") else list(result)
for index, value in enumerate(outputs):
    np.save(workdir / f"out_{index:03d}.npy", value.numpy())
print("ok", len(outputs))
"""


@dataclass(frozen=True)
class AArch64Sysroot:
    """Paths of a prepared sysroot."""

    cache: Path

    @property
    def root(self) -> Path:
        return self.cache / "root"

    @property
    def site(self) -> Path:
        return self.cache / "site"

    @property
    def python(self) -> Path:
        return self.root / "usr" / "bin" / "python3.11"

    def is_ready(self) -> bool:
        """True when the setup script finished here (it writes the stamp last)."""
        return (self.cache / ".ready").is_file() and self.python.is_file() and self.site.is_dir()


def default_sysroot() -> AArch64Sysroot:
    """The cached sysroot location (``SEGCOMPILE_AARCH64_CACHE`` overrides ``<repo>/.cache/aarch64``)."""
    return AArch64Sysroot(Path(os.environ.get("SEGCOMPILE_AARCH64_CACHE", REPO_ROOT / ".cache" / "aarch64")))


def ensure_sysroot(sysroot: AArch64Sysroot | None = None) -> AArch64Sysroot:
    """Return a ready sysroot, running the (idempotent, cached) setup script if it is not ready yet."""
    sysroot = sysroot or default_sysroot()
    if sysroot.is_ready() and shutil.which("qemu-aarch64"):
        return sysroot
    env = dict(os.environ, SEGCOMPILE_AARCH64_CACHE=str(sysroot.cache))
    result = subprocess.run(["bash", str(SETUP_SCRIPT)], env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not sysroot.is_ready():
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-4:])
        raise SegcompileError(f"{SETUP_SCRIPT}: aarch64 sysroot setup failed: {tail}")
    return sysroot


def run_python_under_qemu(
    script: str,
    args: list[str],
    sysroot: AArch64Sysroot | None = None,
    timeout: float = 900.0,
    what: str = "script",
) -> subprocess.CompletedProcess:
    """Run Python source ``script`` with the arm64 python under qemu-aarch64; errors name ``what``."""
    sysroot = ensure_sysroot(sysroot)
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        raise SegcompileError("qemu-aarch64 not found on PATH (apt-get install qemu-user)")
    with tempfile.TemporaryDirectory(prefix="segcompile-qemu-script-") as tmp:
        runner = Path(tmp) / "runner.py"
        runner.write_text(script)
        command = [
            qemu,
            "-L",
            str(sysroot.root),
            "-E",
            f"PYTHONPATH={sysroot.site}",
            "-E",
            "PYTHONNOUSERSITE=1",
            "-E",
            "PYTHONDONTWRITEBYTECODE=1",
            str(sysroot.python),
            str(runner),
            *args,
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise SegcompileError(f"{what}: qemu-aarch64 run timed out after {timeout:.0f} s") from exc
    if result.returncode != 0:
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])
        raise SegcompileError(f"{what}: running under qemu-aarch64 failed: {tail}")
    return result


def run_under_qemu(
    library: Path | str,
    inputs: list[np.ndarray],
    function: str = "main",
    sysroot: AArch64Sysroot | None = None,
    timeout: float = 900.0,
) -> list[np.ndarray]:
    """Run ``function`` of an aarch64 ``library`` on ``inputs`` under qemu-aarch64; return its outputs."""
    library = Path(library).resolve()
    if not library.is_file():
        raise SegcompileError(f"{library}: no such library")
    with tempfile.TemporaryDirectory(prefix="segcompile-qemu-") as tmp:
        work = Path(tmp)
        for index, array in enumerate(inputs):
            np.save(work / f"in_{index:03d}.npy", np.ascontiguousarray(array))
        run_python_under_qemu(
            _RUNNER, [str(library), function, str(work)], sysroot=sysroot, timeout=timeout, what=str(library)
        )
        return [np.load(path) for path in sorted(work.glob("out_*.npy"))]


# Runs inside qemu: call one DSP subgraph entry point of the C package through ctypes (no TVM involved).
_DSP_RUNNER = r"""
import ctypes
import json
import sys
from pathlib import Path

import numpy as np

library, symbol, workdir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
spec = json.loads((workdir / "spec.json").read_text())
lib = ctypes.CDLL(library)
lib.segc_dsp_last_error.restype = ctypes.c_char_p
inputs = [np.ascontiguousarray(np.load(workdir / f"in_{i:03d}.npy")) for i in range(len(spec["inputs"]))]
outputs = [np.zeros(o["shape"], dtype=o["dtype"]) for o in spec["outputs"]]
in_ptrs = (ctypes.c_void_p * max(1, len(inputs)))(*[a.ctypes.data for a in inputs])
out_ptrs = (ctypes.c_void_p * max(1, len(outputs)))(*[o.ctypes.data for o in outputs])
entry = getattr(lib, symbol)
entry.restype = ctypes.c_int32
if entry(in_ptrs, out_ptrs) != 0:
    raise SystemExit("kernel failed: " + lib.segc_dsp_last_error().decode(errors="replace"))
for index, value in enumerate(outputs):
    np.save(workdir / f"out_{index:03d}.npy", value)
"""


def run_dsp_c_under_qemu(
    library: Path | str,
    signature,
    inputs: list[np.ndarray],
    sysroot: AArch64Sysroot | None = None,
    timeout: float = 300.0,
) -> list[np.ndarray]:
    """Run one DSP subgraph (``c_kernels.SubgraphSignature``) of an aarch64-compiled C package under qemu."""
    import json

    library = Path(library).resolve()
    with tempfile.TemporaryDirectory(prefix="segcompile-qemu-dsp-") as tmp:
        work = Path(tmp)
        spec = {
            "inputs": [{"shape": list(t.shape), "dtype": t.dtype} for t in signature.inputs],
            "outputs": [{"shape": list(t.shape), "dtype": t.dtype} for t in signature.outputs],
        }
        (work / "spec.json").write_text(json.dumps(spec))
        for index, (array, tensor) in enumerate(zip(inputs, signature.inputs, strict=True)):
            np.save(work / f"in_{index:03d}.npy", np.ascontiguousarray(array, dtype=tensor.dtype))
        run_python_under_qemu(
            _DSP_RUNNER,
            [str(library), signature.c_symbol, str(work)],
            sysroot=sysroot,
            timeout=timeout,
            what=f"{library} {signature.c_symbol}",
        )
        return [np.load(work / f"out_{i:03d}.npy") for i in range(len(signature.outputs))]
