"""Fixtures and the end-of-run table shared by the kernel benchmarks."""

import json
import os

import pytest

from . import report
from .cases import release_memory

_ROWS = pytest.StashKey[list]()


# Where each case's row is appended as one JSON line as soon as the case ends, so that a run stopped
# by a time limit (gpu_check.sh) keeps every case it finished.
ROWS_FILE = "LRM_FAST_BENCH_ROWS"


@pytest.fixture
def results(request):
    """Rows of the compact table printed after a timed run (one per benchmark)."""
    rows = request.config.stash.setdefault(_ROWS, [])
    first = len(rows)
    yield rows
    path = os.environ.get(ROWS_FILE)
    if path and len(rows) > first:
        with open(path, "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows[first:])


@pytest.fixture(autouse=True)
def _free_memory_after_each_case():
    # The next case's peak memory must not see this one's leftovers (nor a CUDA cache full of them).
    yield
    release_memory()


def pytest_terminal_summary(terminalreporter, config):
    timed = [r for r in config.stash.get(_ROWS, []) if r["ms"] is not None]
    if timed:
        terminalreporter.write_sep("-", "kernel benchmarks: median, GB/s over the floor bytes, peak memory")
        terminalreporter.write_line(report.format_table(timed))
