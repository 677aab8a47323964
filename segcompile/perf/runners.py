"""Runners with a fixed thread count: onnxruntime sessions and TVM Relax VM executables.

Each runner is ``callable(float32 NCHW batch) -> numpy output``. TVM's thread pool is sized once per
process from ``TVM_NUM_THREADS``, so the benchmark runs one child process per thread count (see bench.py)
and sets onnxruntime's intra-op threads to the same number there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segcompile.errors import SegcompileError


@dataclass(frozen=True)
class RunnerSpec:
    """What a runner runs: ``engine`` ort|tvm, ``precision`` float|int8, and the file (ONNX or library)."""

    name: str
    engine: str
    precision: str
    path: str


class OrtRunner:
    """An onnxruntime CPU session on one input, ``threads`` intra-op threads, sequential execution."""

    def __init__(self, path: Path | str, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own error types
            raise SegcompileError(f"{path}: onnxruntime cannot load it ({exc})") from exc
        self._input = self._session.get_inputs()[0].name

    def __call__(self, data: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: data})[0]


class TvmRunner:
    """A built TVM library (``export_library`` output) run by the Relax VM on the CPU."""

    def __init__(self, path: Path | str):
        import tvm
        from tvm import relax

        try:
            library = tvm.runtime.load_module(str(path))
        except Exception as exc:
            raise SegcompileError(f"{path}: cannot load the built library ({exc})") from exc
        self._vm = relax.VirtualMachine(library, tvm.cpu())
        self._main = self._vm["main"]
        self._tvm = tvm

    def __call__(self, data: np.ndarray) -> np.ndarray:
        # The output as a zero-copy numpy view (the VM allocates a fresh output tensor per call), as
        # onnxruntime's session.run returns its own buffer: ``.numpy()`` would add a copy of the whole
        # output (21x512x512 floats: 1.5-3.5 ms) to TVM's time only.
        return np.from_dlpack(self._main(self._tvm.runtime.tensor(data)))


def tvm_threads() -> int:
    """Threads the TVM runtime of this process uses."""
    import tvm

    return int(tvm.runtime.num_threads())


def make_runner(spec: RunnerSpec, threads: int):
    """The runner for ``spec``; a TVM runner requires ``TVM_NUM_THREADS`` to equal ``threads``."""
    if spec.engine == "ort":
        return OrtRunner(spec.path, threads)
    if spec.engine == "tvm":
        if os.environ.get("TVM_NUM_THREADS") != str(threads):
            raise SegcompileError(
                f"TVM runner {spec.name}: TVM_NUM_THREADS must be {threads} before TVM starts its thread pool"
            )
        return TvmRunner(spec.path)
    raise SegcompileError(f"runner {spec.name}: unknown engine {spec.engine!r} (ort or tvm)")
