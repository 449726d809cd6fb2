"""Seconds and GB/s of pushing a model's weights from one process to another over a torch.distributed
broadcast (gloo on CPU), against the same machine's memory-copy bandwidth: the cost of the weight sync
between trainer ranks and rollout workers that run apart.

    python -m benchmarks.weight_broadcast [--shape qwen2.5-1.5b] [--dtype bf16] [--bucket-mb 512]

Rank 0 holds the state dict of a model of that shape (real tensor shapes from its transformers
configuration, random values); rank 1 holds tensors of the same shapes. Per repeat, the weights go a
bucket of about --bucket-mb at a time: rank 0 packs a bucket's tensors into one flat buffer, broadcasts
it, and rank 1 copies it into its tensors, as a worker's load would. Rank 1 checks the last repeat's
tensors against rank 0's through a position-weighted checksum of each tensor's bytes. The printed JSON
holds the bytes, the median seconds per full sync, GB/s (bytes over those seconds) and the copy bandwidth
of benchmarks/copy_bandwidth.py (bytes read plus written per second) measured beside it.
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


def buckets(tensors: list[torch.Tensor], bucket_bytes: int) -> list[list[int]]:
    """Indices of `tensors` grouped in order into buckets of at least `bucket_bytes` (the last smaller)."""
    groups, current, size = [], [], 0
    for i, t in enumerate(tensors):
        current.append(i)
        size += t.numel() * t.element_size()
        if size >= bucket_bytes:
            groups.append(current)
            current, size = [], 0
    return groups + ([current] if current else [])


def sync(tensors: list[torch.Tensor], groups: list[list[int]], rank: int) -> None:
    """One full push from rank 0: each bucket packed, broadcast, unpacked on the receiver."""
    for group in groups:
        parts = [tensors[i] for i in group]
        if rank == 0:
            flat = torch.cat([t.reshape(-1) for t in parts])
        else:
            flat = torch.empty(sum(t.numel() for t in parts), dtype=parts[0].dtype)
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
            position = torch.arange(start, start + len(part), dtype=torch.float64) % 251 + 1
            total += (part * position).sum()
        sums.append(total)
    return torch.stack(sums)


def _worker(rank: int, args, shapes, init_file: str, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    g = torch.Generator().manual_seed(0)
    dtype = DTYPES[args.dtype]
    if rank == 0:
        tensors = [torch.randn(s, generator=g).to(dtype) for _, s in shapes]
    else:
        tensors = [torch.zeros(s, dtype=dtype) for _, s in shapes]
    groups = buckets(tensors, args.bucket_mb * 2**20)
    times = []
    for _ in range(args.repeats):
        dist.barrier()
        start = time.perf_counter()
        sync(tensors, groups, rank)
        dist.barrier()
        times.append(time.perf_counter() - start)
    sums = checksums(tensors)
    gathered = [torch.empty_like(sums) for _ in range(2)]
    dist.all_gather(gathered, sums)
    if rank == 1:
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        seconds = statistics.median(times)
        queue.put({
            "shape": args.shape, "dtype": args.dtype, "tensors": len(tensors), "bytes": nbytes,
            "buckets": len(groups), "bucket_mb": args.bucket_mb, "seconds": seconds, "seconds_all": times,
            "gbps": nbytes / seconds / 1e9, "equal": bool(torch.equal(gathered[0], gathered[1])),
        })  # fmt: skip
    dist.destroy_process_group()


def measure(args) -> dict:
    """The broadcast's figures (two spawned processes), then the copy bandwidth of this process."""
    with tempfile.TemporaryDirectory() as folder:
        queue = mp.get_context("spawn").SimpleQueue()
        shapes = state_shapes(args.shape)
        mp.spawn(_worker, args=(args, shapes, os.path.join(folder, "init"), queue), nprocs=2, join=True)
        result = queue.get()
    result["copy_gbps"] = copy_gbps(torch.device("cpu"), int(args.copy_gib * 2**30), repeats=5)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=SHAPE_NAMES, default="qwen2.5-1.5b")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--bucket-mb", type=int, default=512)  # rollout.sync_bucket_mb's default
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copy-gib", type=float, default=0.5)
    print(json.dumps(measure(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
