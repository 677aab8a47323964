"""Latency and memory measurement.

Timing is *interleaved*: every repeat calls each runner once in turn, so load from other processes on a
shared machine hits all runners alike and the ratios between them stay meaningful even when absolute
times drift. Warm-up calls (first-call allocation, page faults, lazy initialisation) are excluded.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segcompile.errors import SegcompileError


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one runner over ``repeats`` timed calls, in milliseconds."""

    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    warmup: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Turns:
    """How runners take turns: ``block`` timed calls per turn, after a ``pause_s`` sleep and
    ``settle_calls`` untimed calls.

    One thread per engine: call by call (the defaults). Several: onnxruntime's and TVM's worker threads
    spin-wait after a run, and a runner timed right after the other engine shares the cores with those
    spinning threads (measured: TVM at 2 threads 1.9x slower right after onnxruntime than alone). The
    pause lets them park; the settling calls wake the runner's own workers; the block is then timed as
    a user running one engine would see it.
    """

    block: int = 1
    pause_s: float = 0.0
    settle_calls: int = 0

    def __post_init__(self):
        if self.block < 1 or self.pause_s < 0 or self.settle_calls < 0:
            raise SegcompileError(f"timing: need block >= 1, pause_s >= 0, settle_calls >= 0, got {self}")


# Multi-threaded turns (see Turns): enough pause for spinning workers to park, measured on this machine.
# Short blocks, many turns: on a shared machine the second core comes and goes for seconds at a time, and
# one 10-call block per engine put each engine in a different phase (512x512 float at 2 threads measured
# 0.63x to 1.09x across runs); alternating every 2 calls spreads the phases over both engines.
MULTI_THREAD_TURNS = Turns(block=2, pause_s=0.5, settle_calls=3)


def time_interleaved(
    runners: Mapping[str, Callable[[np.ndarray], object]],
    data: np.ndarray,
    warmup: int = 3,
    repeats: int = 20,
    progress: bool | None = None,
    turns: Turns | None = None,
) -> dict[str, LatencyStats]:
    """Median latency of each runner on ``data``; the runners take turns (call by call by default).

    Each runner's previous result stays referenced while it computes the next one, as in an application's
    frame loop (``out = model(frame)``). Dropped at once instead, a large output is freed before the next
    call and glibc hands the memory back to the OS: the next call then page-faults its whole output in
    (measured: the 21x512x512 final resize 4.2 ms instead of 2.4 ms). onnxruntime keeps its own arena, so
    only TVM would pay for what the loop, not the engine, does."""
    turns = turns or Turns()
    if warmup < 0 or repeats < 1:
        raise SegcompileError(f"timing: need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")
    last: dict[str, object] = {}
    for _ in range(warmup):
        for name, run in runners.items():
            last[name] = run(data)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    rounds = -(-repeats // turns.block)
    bar = tqdm(range(rounds), desc="timing", unit="round", disable=None if progress is None else not progress)
    for _ in bar:
        for name, run in runners.items():
            if turns.pause_s:
                time.sleep(turns.pause_s)
            for _ in range(turns.settle_calls):
                last[name] = run(data)
            for _ in range(min(turns.block, repeats - len(samples[name]))):
                start = time.perf_counter()
                last[name] = run(data)
                samples[name].append(time.perf_counter() - start)
    return {
        name: LatencyStats(
            median_ms=round(1e3 * statistics.median(s), 4),
            min_ms=round(1e3 * min(s), 4),
            max_ms=round(1e3 * max(s), 4),
            repeats=repeats,
            warmup=warmup,
        )
        for name, s in samples.items()
    }


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SegcompileError(f"/proc/self/status has no {field} field (Linux only)")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_growth(step: Callable[[], object]) -> tuple[object, float | None]:
    """Run ``step`` and return its result and how far the peak RSS rose above the RSS before it (MiB).

    None when the peak cannot be reset (the growth would then include everything before).
    """
    if not reset_peak_rss():
        return step(), None
    before = status_mib("VmRSS")
    result = step()
    return result, round(status_mib("VmHWM") - before, 1)
