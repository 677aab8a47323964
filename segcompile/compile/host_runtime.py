"""Build a Relax module for the host (x86_64 LLVM) and run the built library on numpy input.

The host build is the reference the board builds are compared with: the same integer program,
compiled for the machine running the tests. It uses TVM's fused default CPU pipeline
(``relax.backend.cpu_generic``), because plain ``tvm.compile`` does no operator fusion on CPU.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import tvm
import tvm.relax.backend.cpu_generic  # noqa: F401  (registers get_default_pipeline)
from tvm import relax

from segcompile.artifacts import atomic_path
from segcompile.errors import SegcompileError

HOST_LIBRARY = "model.so"
# Generic x86-64 (no -mcpu): the host artifact must run on any CI machine, not only this one.
HOST_TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}


def host_target() -> tvm.target.Target:
    """The LLVM target of the host build."""
    return tvm.target.Target(HOST_TARGET)


def compile_relax(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Executable:
    """Compile ``mod`` for ``target`` with TVM's fused default CPU pipeline."""
    pipeline = relax.backend.cpu_generic.get_default_pipeline(target)
    return tvm.compile(mod, target=target, relax_pipeline=pipeline)


def build_for_host(mod: tvm.IRModule, out_dir: Path | str) -> Path:
    """Compile ``mod`` for x86_64 and write ``out_dir/model.so`` atomically; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    executable = compile_relax(mod, host_target())
    final = out_dir / HOST_LIBRARY
    with atomic_path(final) as temp:
        executable.export_library(str(temp))
    return final


class HostModule:
    """A built integer module loaded for inference: ``HostModule(path)(image) -> logits``."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if not self.path.is_file():
            raise SegcompileError(f"{self.path}: no built library (run the compile stage first)")
        # dlopen() returns the already-loaded library when the same path is opened twice in one
        # process, even if the file was rebuilt in between; load a private copy so that a rebuilt
        # model.so is really the one that runs. The copy can go at once: the mapping stays valid.
        with tempfile.TemporaryDirectory(prefix="segcompile-host-") as private:
            copy = Path(private) / self.path.name
            shutil.copyfile(self.path, copy)
            try:
                library = tvm.runtime.load_module(str(copy))
            except Exception as exc:  # tvm raises its own error types for a bad/foreign library
                raise SegcompileError(f"{self.path}: cannot load the built library ({exc})") from exc
        self._vm = relax.VirtualMachine(library, tvm.cpu())
        self._main = self._vm["main"]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Run ``main`` on one float32 NCHW batch and return the output as numpy."""
        data = np.ascontiguousarray(image, dtype=np.float32)
        try:
            result = self._main(tvm.runtime.tensor(data))
        except Exception as exc:  # shape mismatch etc. surface as TVM errors
            raise SegcompileError(f"{self.path}: input of shape {data.shape} rejected: {exc}") from exc
        return result.numpy()
