"""Process-wide settings every entry point applies first."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from lrm_fast.runtime.distributed import DistInfo, init_distributed

# torch's own choice (one per physical core), before configure_runtime changes it.
DEFAULT_THREADS = torch.get_num_threads()


def configure_runtime(num_threads: int = 0) -> DistInfo:
    # Subnormal floats make CPU steps about 10x slower after a few updates of a small model.
    torch.set_flush_denormal(True)
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    return init_distributed()


@contextmanager
def threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to `count` inside the block (0: unchanged), restored after it."""
    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
