"""Process-wide settings every entry point applies first."""

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
