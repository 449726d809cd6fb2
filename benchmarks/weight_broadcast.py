"""Seconds and GB/s of pushing a model's weights from one process to another, against the same machine's
memory-copy bandwidth: the cost of the weight sync between trainer ranks and rollout workers that run
apart.

    python -m benchmarks.weight_broadcast [--shape qwen2.5-1.5b] [--dtype bf16] [--bucket-mb 512]
                                          [--device cpu|cuda]

--device cpu: the rollout workers' own push (lrm_fast/runtime/worker_group.py: WorkerGroup.broadcast_bucket
over its gloo control group) between two processes. --device cuda with two GPUs or more: an NCCL broadcast
from a process on GPU 0 to one on GPU 1. With one GPU, NCCL refuses two ranks on one device, so the push
goes through CUDA IPC instead, as a colocated engine's would: rank 0 sends each packed bucket's IPC handle,
and rank 1 copies the bucket into its tensors (the "mode" field says which ran).

Rank 0 holds the state dict of a model of that shape (real tensor shapes from its transformers
configuration, random values); rank 1 holds tensors of the same shapes. Per repeat, the weights go in the
workers' buckets of up to --bucket-mb (worker_group.buckets): rank 0 packs a bucket's tensors into one flat
buffer, broadcasts it, and rank 1 copies it into its tensors, as a worker's load_state_dict does. Rank 1
checks the last repeat's tensors against rank 0's through a position-weighted checksum of each tensor's
bytes. The printed JSON holds the bytes, the median seconds per full sync, GB/s (bytes over those seconds)
and the copy bandwidth of benchmarks/copy_bandwidth.py (bytes read plus written per second) on the same
device, measured beside it.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lrm_fast.runtime.worker_group import TensorSpec, WorkerGroup, buckets

from .copy_bandwidth import copy_gbps

SHAPE_NAMES = ("qwen2.5-1.5b", "tiny-long-v32k")  # benchmarks/update_at_length.py's SHAPES
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def state_shapes(shape: str) -> list[tuple[str, torch.Size]]:
    """(name, shape) of every tensor in the state dict of a Qwen2 model of `shape` (built on the meta
    device: no memory), the tied head once."""
    # Imported here: the two spawned processes get the shapes and need none of it.
    from transformers import AutoModelForCausalLM

    from lrm_fast.config import TinyModelConfig
    from lrm_fast.model.causal_lm import tiny_qwen2_config

    from .update_at_length import SHAPES

    settings = dict(SHAPES[shape])
    vocab_size, num_kv_heads = settings.pop("vocab_size"), settings.pop("num_kv_heads")
    tied = settings.pop("tied", True)
    config = tiny_qwen2_config(vocab_size, TinyModelConfig(**settings), num_kv_heads=num_kv_heads)
    config.tie_word_embeddings = tied
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [(name, p.shape) for name, p in model.named_parameters()]


def bucket_indices(tensors: list[torch.Tensor], bucket_bytes: int) -> list[list[int]]:
    """Indices of `tensors` in the rollout workers' buckets (worker_group.buckets: consecutive, up to
    `bucket_bytes` each, a larger tensor alone)."""
    specs = [TensorSpec(str(i), tuple(t.shape), t.dtype) for i, t in enumerate(tensors)]
    return [[int(s.name) for s in bucket] for bucket in buckets(specs, bucket_bytes)]


def gloo_sync(tensors: list[torch.Tensor], groups: list[list[int]], group: WorkerGroup) -> None:
    """One full push from rank 0 as the rollout workers take it: each bucket one broadcast on the worker
    group, copied into the receiver's tensors."""
    for indices in groups:
        parts = [tensors[i] for i in indices]
        specs = [TensorSpec(str(i), tuple(t.shape), t.dtype) for i, t in zip(indices, parts, strict=True)]
        received = group.broadcast_bucket(parts if group.rank == 0 else None, specs)
        if group.rank != 0:
            for t, r in zip(parts, received, strict=True):
                t.copy_(r)


def nccl_sync(tensors: list[torch.Tensor], groups: list[list[int]], rank: int) -> None:
    """One full push from rank 0 over NCCL: each bucket packed, broadcast, unpacked on the receiver."""
    for group in groups:
        parts = [tensors[i] for i in group]
        if rank == 0:
            flat = torch.cat([t.reshape(-1) for t in parts])
        else:
            flat = torch.empty(sum(t.numel() for t in parts), dtype=parts[0].dtype, device=parts[0].device)
        dist.broadcast(flat, src=0)
        if rank != 0:
            for t, chunk in zip(parts, flat.split([t.numel() for t in parts]), strict=True):
                t.copy_(chunk.view_as(t))


def checksums(tensors: list[torch.Tensor], chunk: int = 1 << 24) -> torch.Tensor:
    """Per tensor, its bytes weighted by their position (mod 251) and summed in float64, `chunk` bytes at
    a time (a float64 copy of a whole embedding would be 8 times its size): equal tensors give equal sums,
    and a byte moved or changed almost surely changes one."""
    sums = []
    for t in tensors:
        data, total = t.reshape(-1).view(torch.uint8), torch.zeros((), dtype=torch.float64)
        for start in range(0, len(data), chunk):
            part = data[start : start + chunk].double()
            position = (
                torch.arange(start, start + len(part), dtype=torch.float64, device=data.device) % 251 + 1
            )
            total += (part * position).sum().cpu()
        sums.append(total)
    return torch.stack(sums)


def _mode(device: str) -> str:
    if device == "cpu":
        return "gloo"
    return "nccl" if torch.cuda.device_count() >= 2 else "cuda-ipc"


def _tensors(rank: int, shapes, dtype, device: torch.device) -> list[torch.Tensor]:
    # Drawn where they live: 1.8B normal values take seconds on a GPU and about a minute on one CPU core.
    g = torch.Generator(device).manual_seed(0)
    if rank == 0:
        return [torch.randn(s, generator=g, device=device).to(dtype) for _, s in shapes]
    return [torch.zeros(s, dtype=dtype, device=device) for _, s in shapes]


def _worker(rank: int, args, shapes, init_file: str, queue, ipc) -> None:
    torch.set_num_threads(1)
    mode = _mode(args.device)
    device = torch.device("cpu") if mode == "gloo" else torch.device("cuda", rank if mode == "nccl" else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if mode == "nccl" else "gloo"  # gloo, cuda-ipc: the default group for barriers, sums
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=2)
    tensors = _tensors(rank, shapes, DTYPES[args.dtype], device)
    groups = bucket_indices(tensors, args.bucket_mb * 2**20)
    if mode == "gloo":
        store = dist.PrefixStore("workers", dist.FileStore(f"{init_file}.workers", 2))
        workers = WorkerGroup(store, rank, 2)
        push = lambda: gloo_sync(tensors, groups, workers)
    elif mode == "nccl":
        push = lambda: nccl_sync(tensors, groups, rank)
    else:
        push = lambda: ipc_sync(tensors, groups, rank, ipc)
    times = []
    for _ in range(args.repeats):
        _synchronize(device)
        dist.barrier()
        start = time.perf_counter()
        push()
        _synchronize(device)
        dist.barrier()
        times.append(time.perf_counter() - start)
    sums = checksums(tensors)
    gathered = [torch.empty_like(sums) for _ in range(2)]
    dist.all_gather(gathered, sums.to(device) if backend == "nccl" else sums)
    if rank == 1:
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        seconds = statistics.median(times)
        queue.put({
            "shape": args.shape, "dtype": args.dtype, "mode": mode, "tensors": len(tensors), "bytes": nbytes,
            "buckets": len(groups), "bucket_mb": args.bucket_mb, "seconds": seconds, "seconds_all": times,
            "gbps": nbytes / seconds / 1e9, "equal": bool(torch.equal(gathered[0].cpu(), gathered[1].cpu())),
        })  # fmt: skip
    dist.destroy_process_group()


def ipc_sync(tensors: list[torch.Tensor], groups: list[list[int]], rank: int, ipc) -> None:
    """One full push through CUDA IPC: rank 0 packs each bucket and sends it (torch.multiprocessing sends a
    CUDA tensor's IPC handle); rank 1 copies it into its tensors and says so, and only then does rank 0 let
    the bucket go (the sender must keep a shared CUDA tensor alive while it is used)."""
    to_receiver, done = ipc
    for group in groups:
        parts = [tensors[i] for i in group]
        if rank == 0:
            flat = torch.cat([t.reshape(-1) for t in parts])
            torch.cuda.synchronize()
            to_receiver.put(flat)
            done.get()
            del flat
        else:
            flat = to_receiver.get()
            for t, chunk in zip(parts, flat.split([t.numel() for t in parts]), strict=True):
                t.copy_(chunk.view_as(t))
            torch.cuda.synchronize()
            del flat
            done.put(True)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args) -> dict:
    """The push's figures (two spawned processes), then the copy bandwidth of this process's device."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA GPU")
    with tempfile.TemporaryDirectory() as folder:
        context = mp.get_context("spawn")
        queue = context.SimpleQueue()
        ipc = (context.Queue(), context.Queue())
        shapes = state_shapes(args.shape)
        mp.spawn(_worker, args=(args, shapes, os.path.join(folder, "init"), queue, ipc), nprocs=2, join=True)
        result = queue.get()
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    result["copy_gbps"] = copy_gbps(device, int(args.copy_gib * 2**30), repeats=5)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=SHAPE_NAMES, default="qwen2.5-1.5b")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--bucket-mb", type=int, default=512)  # rollout.sync_bucket_mb's default
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copy-gib", type=float, default=0.5)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    result = measure(parse_args(argv))
    print(json.dumps(result))
    if not result["equal"]:
        raise SystemExit("the received weights differ from the sent ones")


if __name__ == "__main__":
    main()
