"""Fixtures shared across the test tree."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run on one intra-op thread: at tiny-model sizes thread synchronisation costs more than the
    arithmetic (on 2 busy cores, two threads made forward passes several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
