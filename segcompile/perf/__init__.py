"""Performance: latency of compiled TVM modules against onnxruntime, compile cost, tuning (issue 6).

- :mod:`segcompile.perf.timing`: interleaved timing (warm-up excluded, median of repeats) and peak memory
- :mod:`segcompile.perf.runners`: onnxruntime and TVM runners with a fixed thread count
- :mod:`segcompile.perf.child`: one measurement per thread count, in its own process
- :mod:`segcompile.perf.bench`: :func:`run_bench`, the whole benchmark of one model on one profile
- :mod:`segcompile.perf.prepare`: float + QDQ ONNX from a build folder or a zoo model
- :mod:`segcompile.perf.results`: JSON schema check and the markdown tables
- :mod:`segcompile.perf.command`: ``segcompile bench`` and ``segcompile tune``

Schedules live with the compiler: ``segcompile.compile.cpu_schedules`` (hand-written) and
``segcompile.compile.tuning`` (MetaSchedule databases).
"""
