"""Kernel benchmarks (pytest-benchmark suites bench_*.py), their measuring helpers and the GPU check.

    pytest benchmarks --benchmark-disable          # every case once: what a test pass runs
    pytest benchmarks --benchmark-only -k cpu      # the CPU presets, timed, with the table at the end
    bash benchmarks/gpu_check.sh [--budget S]      # everything measured on a CUDA host, in S seconds
    python -m benchmarks.aot_compile               # every kernel compiled for sm_80 / sm_90, no GPU needed

See RESULTS.md for what was measured where.
"""
