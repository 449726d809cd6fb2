"""Kernel benchmarks (pytest-benchmark suites bench_*.py), their measuring helpers and the GPU check.

    pytest benchmarks --benchmark-disable          # every case once: what a test pass runs
    pytest benchmarks --benchmark-only -k cpu      # the CPU presets, timed, with the table at the end
    bash benchmarks/gpu_check.sh [--dry-run]       # the one prepared call for a lent GPU

See RESULTS.md for what was measured where.
"""
