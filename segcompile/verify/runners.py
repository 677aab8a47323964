"""Ways to run a model of a build folder behind one small interface.

A runner maps a float32 ``1x3xHxW`` input to the model's raw output (logits or probability).
``run_batch`` exists so that runners with a high per-call cost (a qemu process) can take many
frames at once; the others just loop.

Kinds:
- ``onnxruntime-float``: onnxruntime on ``float.onnx`` (the reference).
- ``onnxruntime-qdq``: onnxruntime on ``int8.qdq.onnx`` (simulated quantization, for comparison).
- ``tvm-host``: the compiled integer program built for x86_64 (what the board computes).
- ``tvm-aarch64-qemu``: the aarch64 build run under qemu-user (slow; bit-identical to tvm-host).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from segcompile.errors import SegcompileError

FLOAT = "onnxruntime-float"
QDQ = "onnxruntime-qdq"
HOST = "tvm-host"
QEMU = "tvm-aarch64-qemu"
INT8_KINDS = ("auto", HOST, QEMU, QDQ)

_ELF_MACHINE = {62: "x86_64", 183: "aarch64", 40: "arm"}


class Runner(Protocol):
    """Runs one model; ``name`` is the runner kind recorded in the report."""

    name: str

    def __call__(self, x: np.ndarray) -> np.ndarray: ...

    def run_batch(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class OnnxRuntimeRunner:
    """onnxruntime on the CPU, one input tensor, first output."""

    def __init__(self, path: Path | str, name: str, threads: int = 0) -> None:
        path = Path(path)
        if not path.is_file():
            raise SegcompileError(f"{path}: not found (run the stage that writes it first)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types for bad models
            raise SegcompileError(f"{path}: onnxruntime cannot load it ({exc})") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise SegcompileError(f"{path}: expected one model input, found {[i.name for i in inputs]}")
        self._input = inputs[0].name
        self._output = self._session.get_outputs()[0].name
        self.name = name
        self.path = path

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input: np.ascontiguousarray(x, np.float32)})[0]

    def run_batch(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self(x) for x in inputs]


class HostModuleRunner:
    """The compiled integer program, built for this machine (x86_64)."""

    name = HOST

    def __init__(self, library: Path) -> None:
        try:
            from segcompile.compile.host_runtime import HostModule
        except ImportError as exc:
            raise SegcompileError(f"the {HOST} runner needs segcompile.compile.host_runtime ({exc})") from exc
        self.path = library
        self._module = HostModule(library)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._module(np.ascontiguousarray(x, np.float32)))

    def run_batch(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self(x) for x in inputs]


# Runs inside qemu with the sysroot's arm64 python: load the library once, run main on every frame.
# (segcompile.compile.qemu.run_under_qemu makes one call per process; starting python + TVM under
# qemu costs seconds, so frames are batched here.)
_QEMU_BATCH_SCRIPT = r"""
import sys
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

library, workdir = sys.argv[1], Path(sys.argv[2])
vm = relax.VirtualMachine(tvm.runtime.load_module(library), tvm.cpu())
for path in sorted(workdir.glob("in_*.npy")):
    out = vm["main"](tvm.runtime.tensor(np.load(path)))
    np.save(workdir / path.name.replace("in_", "out_"), out.numpy())
"""


class QemuRunner:
    """The aarch64 build under qemu-user, one qemu process per batch of frames (start-up dominates)."""

    name = QEMU

    def __init__(self, library: Path, timeout: float = 1800.0) -> None:
        try:
            from segcompile.compile.qemu import ensure_sysroot
        except ImportError as exc:
            raise SegcompileError(f"the {QEMU} runner needs segcompile.compile.qemu ({exc})") from exc
        self._sysroot = ensure_sysroot()
        self._qemu = shutil.which("qemu-aarch64")
        if self._qemu is None:
            raise SegcompileError("qemu-aarch64 not found on PATH (apt-get install qemu-user)")
        self.path = Path(library).resolve()
        self.timeout = timeout

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run_batch([x])[0]

    def run_batch(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="segcompile-verify-qemu-") as tmp:
            work = Path(tmp)
            for index, x in enumerate(inputs):
                np.save(work / f"in_{index:05d}.npy", np.ascontiguousarray(x, np.float32))
            (work / "runner.py").write_text(_QEMU_BATCH_SCRIPT)
            root = self._sysroot.root
            command = [self._qemu, "-L", str(root), "-E", f"PYTHONPATH={self._sysroot.site}",
                       "-E", "PYTHONNOUSERSITE=1", "-E", "PYTHONDONTWRITEBYTECODE=1",
                       str(self._sysroot.python), str(work / "runner.py"), str(self.path), str(work)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout,
                                      check=False)
            except subprocess.TimeoutExpired as exc:
                raise SegcompileError(
                    f"{self.path}: qemu-aarch64 run timed out after {self.timeout:.0f} s"
                ) from exc
            if done.returncode != 0:
                tail = " | ".join(done.stderr.strip().splitlines()[-3:])
                raise SegcompileError(f"{self.path}: running under qemu-aarch64 failed: {tail}")
            return [np.load(work / f"out_{index:05d}.npy") for index in range(len(inputs))]


def elf_machine(path: Path) -> str | None:
    """The ELF machine of a shared library ("x86_64", "aarch64", "arm"), or None if not an ELF file."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(20)
    except OSError:
        return None
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    byteorder = "little" if header[5] == 1 else "big"
    return _ELF_MACHINE.get(int.from_bytes(header[18:20], byteorder), "other")


def find_library(build_dir: Path, machine: str) -> Path | None:
    """Locate the compiled library of ``machine`` in a build folder.

    Paths named in compile.json come first; otherwise the conventional ``host/model.so``; then any
    ``.so`` whose ELF header says ``machine`` (the header is the ground truth whatever the layout).
    """
    candidates: list[Path] = []
    compile_json = build_dir / "compile.json"
    if compile_json.is_file():
        try:
            candidates += [build_dir / p for p in _so_paths(json.loads(compile_json.read_text()))]
        except json.JSONDecodeError as exc:
            raise SegcompileError(f"{compile_json}: not valid JSON ({exc})") from exc
    if machine == "x86_64":
        candidates.append(build_dir / "host" / "model.so")
    candidates += sorted(build_dir.glob("*/*.so"))
    for candidate in candidates:
        if candidate.is_file() and elf_machine(candidate) == machine:
            return candidate
    return None


def _so_paths(node: object) -> list[str]:
    """Every string ending in .so anywhere in a JSON document (compile.json's layout is not ours)."""
    if isinstance(node, str):
        return [node] if node.endswith(".so") else []
    if isinstance(node, dict):
        return [p for value in node.values() for p in _so_paths(value)]
    if isinstance(node, list):
        return [p for value in node for p in _so_paths(value)]
    return []


def float_runner(build_dir: Path, threads: int = 0) -> OnnxRuntimeRunner:
    """onnxruntime on the build's ``float.onnx``."""
    return OnnxRuntimeRunner(build_dir / "float.onnx", FLOAT, threads)


def int8_runner(build_dir: Path, kind: str = "auto", threads: int = 0) -> Runner:
    """The runner for the int8 model of a build folder.

    ``auto`` picks the compiled host module when the build has one, else onnxruntime on the QDQ model
    (so a build that stopped after quantize can still be verified; the report names the runner).
    """
    if kind not in INT8_KINDS:
        raise SegcompileError(f"--int8-runner: unknown runner {kind!r} (choose from {', '.join(INT8_KINDS)})")
    if kind in ("auto", HOST):
        library = find_library(build_dir, "x86_64")
        if library is not None:
            return HostModuleRunner(library)
        if kind == HOST:
            raise SegcompileError(
                f"{build_dir}: no x86_64 host build found (expected host/model.so or a compile.json entry); "
                "run `segcompile compile` with a profile that builds for the host, or use --int8-runner "
                f"{QDQ}"
            )
    if kind == QEMU:
        library = find_library(build_dir, "aarch64")
        if library is None:
            raise SegcompileError(f"{build_dir}: no aarch64 build found for the {QEMU} runner")
        return QemuRunner(library)
    return OnnxRuntimeRunner(build_dir / "int8.qdq.onnx", QDQ, threads)
