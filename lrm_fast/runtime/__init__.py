"""Process set-up shared by every entry point: threads, denormals, torch.distributed."""

from lrm_fast.runtime.distributed import (
    DistInfo,
    all_reduce,
    broadcast_from_main,
    close_distributed,
    init_distributed,
)
from lrm_fast.runtime.process import DEFAULT_THREADS, configure_runtime, threads

__all__ = [
    "DEFAULT_THREADS",
    "DistInfo",
    "all_reduce",
    "broadcast_from_main",
    "close_distributed",
    "configure_runtime",
    "init_distributed",
    "threads",
]
