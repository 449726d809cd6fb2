"""Fixtures and the end-of-run table shared by the kernel benchmarks."""

import pytest

from . import report
from .cases import release_memory

_ROWS = pytest.StashKey[list]()


@pytest.fixture
def results(request) -> list:
    """Rows of the compact table printed after a timed run (one per benchmark)."""
    return request.config.stash.setdefault(_ROWS, [])


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
