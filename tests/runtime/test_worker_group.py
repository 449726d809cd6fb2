"""The worker group's messages between trainer rank 0 and two workers: objects broadcast in order, tensors
of mixed dtypes and odd sizes in buckets (each landing at an aligned offset), and results received from
whichever worker sends first."""

import torch
import torch.multiprocessing as mp

from lrm_fast.runtime.worker_group import TensorSpec, WorkerGroup, buckets, host_store

TENSORS = {
    "embed": torch.randn(10, 21),
    "norm": torch.randn(5).to(torch.bfloat16),  # 10 bytes: the next tensor starts unaligned unless padded
    "positions": torch.arange(7),
    "flag": torch.tensor([True, False, True]),
    "big": torch.randn(300),  # a bucket of its own at 1000 bytes
}
SPECS = [TensorSpec(name, tuple(t.shape), t.dtype) for name, t in TENSORS.items()]


def _worker(rank: int, address, size: int) -> None:
    group = WorkerGroup.join(address, rank, size)
    header = group.broadcast_object()
    received = {}
    for bucket in header["buckets"]:
        tensors = group.broadcast_bucket(None, bucket)
        received.update((s.name, t.clone()) for s, t in zip(bucket, tensors, strict=True))
    group.send_object((header["note"], received))


def test_objects_and_bucketed_tensors_reach_every_worker_and_results_come_back():
    plan = buckets(SPECS, 1000)
    assert [len(b) for b in plan] == [4, 1]  # 840 + 10 + 56 + 3 bytes, then 1200 alone
    store, address = host_store(2)
    context = mp.get_context("spawn")
    workers = [context.Process(target=_worker, args=(rank, address, 3)) for rank in (1, 2)]
    for process in workers:
        process.start()
    group = WorkerGroup(store, 0, 3)
    group.broadcast_object({"note": "weights follow", "buckets": plan})
    for bucket in plan:
        group.broadcast_bucket([TENSORS[s.name] for s in bucket], bucket)
    sources = set()
    for _ in workers:
        source, (note, received) = group.recv_object()
        sources.add(source)
        assert note == "weights follow"
        assert received.keys() == TENSORS.keys()
        for name, tensor in TENSORS.items():
            assert received[name].dtype == tensor.dtype
            assert torch.equal(received[name], tensor), name
    assert sources == {1, 2}
    for process in workers:
        process.join(timeout=30)
        assert process.exitcode == 0
