"""One benchmark measurement at one thread count, in its own process (``python -m segcompile.perf.child``).

TVM sizes its thread pool once per process from ``TVM_NUM_THREADS``; the parent sets it before starting
this process. Reads a JSON request on stdin, prints one JSON line of results on stdout.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from segcompile.perf.runners import RunnerSpec, make_runner, tvm_threads
from segcompile.perf.timing import MULTI_THREAD_TURNS, Turns, peak_rss_growth, time_interleaved


def measure(request: dict) -> dict:
    """Load each runner (peak memory of load + first call), check outputs, then time them interleaved."""
    threads = int(request["threads"])
    data = np.load(request["input"])
    specs = [RunnerSpec(**s) for s in request["runners"]]
    runners, peak, outputs = {}, {}, {}
    # Import both engines first: the peak memory of a runner should not include importing its library.
    import onnxruntime  # noqa: F401
    import tvm.relax  # noqa: F401

    for spec in specs:

        def load_and_run(spec=spec):
            runner = make_runner(spec, threads)
            return runner, runner(data)

        (runner, output), growth = peak_rss_growth(load_and_run)
        runners[spec.name], outputs[spec.name], peak[spec.name] = runner, output, growth
    turns = Turns() if threads == 1 else MULTI_THREAD_TURNS
    latency = time_interleaved(
        runners, data, request["warmup"], request["repeats"], progress=False, turns=turns
    )
    return {
        "threads": threads,
        "tvm_threads": tvm_threads() if any(s.engine == "tvm" for s in specs) else None,
        "latency": {name: stats.to_dict() for name, stats in latency.items()},
        "peak_rss_mib": peak,
        "agreement": _agreement(specs, outputs),
    }


def _agreement(specs: list[RunnerSpec], outputs: dict) -> dict:
    """Each TVM output against onnxruntime's of the same precision: max |diff| and argmax agreement."""
    by_key = {(s.engine, s.precision): s.name for s in specs}
    out = {}
    for spec in specs:
        reference = by_key.get(("ort", spec.precision))
        if spec.engine != "tvm" or reference is None:
            continue
        ours, theirs = outputs[spec.name].astype(np.float64), outputs[reference].astype(np.float64)
        if ours.shape != theirs.shape:
            out[spec.name] = {"against": reference, "shape_mismatch": [list(ours.shape), list(theirs.shape)]}
            continue
        out[spec.name] = {
            "against": reference,
            "max_abs_diff": float(np.max(np.abs(ours - theirs))),
            "argmax_agreement": float(np.mean(ours.argmax(axis=1) == theirs.argmax(axis=1))),
        }
    return out


def main() -> int:
    print(json.dumps(measure(json.loads(sys.stdin.read()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
