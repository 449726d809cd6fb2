"""Peak memory of one call: how much memory it needs beyond what is allocated when it starts.

Shared by the benchmarks (extra_info["peak_mem_bytes"]) and the tests that bound a backend's memory.

CUDA: the caching allocator's high-water mark (torch.cuda.max_memory_allocated), reset before the call.

CPU: growth of the process's resident set size (RSS). Linux keeps its high-water mark (VmHWM in
/proc/self/status), and writing "5" to /proc/self/clear_refs resets that mark to the current RSS. Large
tensors are mmap-allocated and unmapped when freed, so RSS follows them closely. Before the baseline, glibc's
malloc_trim hands freed heap pages back to the kernel, so that a call reusing them counts them as growth
rather than hiding inside an RSS inflated by earlier calls. RSS is per process: other people's work on a
shared machine does not enter it, though Python objects and lazily loaded libraries of this process do
(warm the call up first).

Both read the peak while the call's result is still alive: what the result keeps (an autograd graph's
saved tensors, a gradient) counts.
"""

import ctypes
import functools
import gc
from collections.abc import Callable

import torch

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"
_RESET_PEAK_RSS = "5"  # proc(5): "reset the peak resident set size (high water mark) to the current RSS"


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Run fn() once and return the peak memory (bytes) it needed above the memory in use when it started."""
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_peak_bytes(fn, device)
    if device.type == "cpu":
        return _cpu_peak_bytes(fn)
    raise ValueError(f"device must be cpu or cuda, got {device}")


def cpu_peak_supported() -> bool:
    """Whether this process can reset and read its peak RSS (Linux >= 4.0 with /proc mounted)."""
    try:
        _reset_peak_rss()
        _status_kib("VmHWM")
    except (OSError, KeyError):
        return False
    return True


def _cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del result
    return peak


def _cpu_peak_bytes(fn: Callable[[], object]) -> int:
    gc.collect()
    _trim_heap()
    _reset_peak_rss()
    base = _status_kib("VmRSS")
    result = fn()
    peak = _status_kib("VmHWM")
    del result
    return max(peak - base, 0) * 1024


def _reset_peak_rss() -> None:
    with open(_CLEAR_REFS, "w") as f:
        f.write(_RESET_PEAK_RSS)


def _status_kib(field: str) -> int:
    with open(_STATUS) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # "VmHWM:    123456 kB"
    raise KeyError(f"{field} not in {_STATUS}")


def _trim_heap() -> None:
    malloc_trim = _malloc_trim()
    if malloc_trim is not None:
        malloc_trim(0)


@functools.cache
def _malloc_trim():
    # glibc only; elsewhere (musl) freed heap pages may stay resident and slightly understate growth.
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
