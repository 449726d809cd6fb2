"""Fixtures shared across the test tree."""

import atexit
import os
import shutil
import tempfile

import pytest
import torch

# Datasets read in tests (through `datasets`, lrm_fast/data/loading.py) are cached in a folder of this
# session, never in the user's HF cache. Set before `datasets` is first imported: it reads this once.
_DATASETS_CACHE = tempfile.mkdtemp(prefix="lrm_fast_test_datasets_")
os.environ["HF_DATASETS_CACHE"] = _DATASETS_CACHE
atexit.register(shutil.rmtree, _DATASETS_CACHE, ignore_errors=True)


@pytest.fixture
def one_thread():
    """Run on one intra-op thread: at tiny-model sizes thread synchronisation costs more than the
    arithmetic (on 2 busy cores, two threads made forward passes several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cold_start_cache(tmp_path_factory):
    """One folder of cached SFT cold starts for the whole session (tests/inprocess.py trains its quick one
    there once)."""
    return tmp_path_factory.mktemp("cold_start_cache")
