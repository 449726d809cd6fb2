"""The process groups between trainer rank 0 and the rollout workers, apart from the trainers' default group.

The trainers' collectives (FSDP2's all-gathers, every metric all-reduce) stay on the default group that
torchrun made, and a vLLM engine makes a default group of its own inside its worker, so the workers join
neither: rank 0 hosts a TCPStore and it and the workers form gloo groups over it, as OpenRLHF's and verl's
weight-update groups do (with NCCL on GPU). Group rank 0 is trainer rank 0; workers are 1 .. W.

Two groups, so that a worker busy sampling never holds up the trainer:
- `control`: broadcasts from rank 0, in one order on every member (requests, the weights a bucket at a
  time, the stop). A worker receives them on a thread of its own, whatever it is sampling.
- `results`: each worker's messages back to rank 0, point to point (rank 0 receives from any worker).
"""

import pickle
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Waiting is normal here: a worker idles through an evaluation, rank 0 through a long batch. So an operation
# waits up to a day; a dead peer is found by watching its process (lrm_fast/training/async_rollout.py), and
# gloo raises at once when a peer's connection closes. Joining is short: a worker joins first thing.
TIMEOUT = timedelta(days=1)
JOIN_TIMEOUT = timedelta(minutes=5)
# Weights travel in buckets of about this size: one broadcast per bucket, one bucket's copy at a time.
BUCKET_BYTES = 256 << 20
_SIZE_TAG, _PAYLOAD_TAG = 0, 1


@dataclass(frozen=True)
class Address:
    host: str
    port: int


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * torch.empty((), dtype=self.dtype).element_size()


class WorkerGroup:
    """One member's end of the control and results groups (rank 0: the trainer; 1 .. W: the workers)."""

    def __init__(self, store: dist.Store, rank: int, size: int, join_timeout: timedelta = JOIN_TIMEOUT):
        """Joins both groups (waits for every member, up to `join_timeout`)."""
        self.rank, self.size = rank, size
        self.control = dist.ProcessGroupGloo(dist.PrefixStore("control", store), rank, size, join_timeout)
        self.results = dist.ProcessGroupGloo(dist.PrefixStore("results", store), rank, size, join_timeout)
        for group in (self.control, self.results):
            group.set_timeout(TIMEOUT)
        self._store = store  # the groups rendezvous through it; rank 0's is the server

    @classmethod
    def join(cls, address: Address, rank: int, size: int) -> "WorkerGroup":
        store = dist.TCPStore(
            address.host, address.port, world_size=size, is_master=False, timeout=JOIN_TIMEOUT
        )
        return cls(store, rank, size)

    @classmethod
    def join_apart(cls, address: Address, index: int | None = None) -> "WorkerGroup":
        """Join as worker `index` (1, 2, ...) of those rank 0 waits for beyond the ones it started itself
        (workers started apart); None: the next index not yet claimed (in the order the workers connect).
        The group's size and the first such rank are in rank 0's store (host_store)."""
        store = dist.TCPStore(address.host, address.port, is_master=False, timeout=JOIN_TIMEOUT)
        size, first = int(store.get("size")), int(store.get("first_remote"))
        if index is None:
            index = store.add("remote_joined", 1)
        if not 1 <= index <= size - first:
            raise RuntimeError(
                f"rank 0 at {address.host}:{address.port} waits for {size - first} worker(s) started apart: "
                f"there is no worker {index}"
            )
        return cls(store, first + index - 1, size)

    # ------------------------------------------------------------------ control: rank 0 to every worker
    def broadcast_object(self, value=None):
        """Rank 0's picklable `value` on every member."""
        if self.rank == 0:
            payload = torch.frombuffer(bytearray(pickle.dumps(value)), dtype=torch.uint8)
            size = torch.tensor([payload.numel()], dtype=torch.int64)
        else:
            size = torch.zeros(1, dtype=torch.int64)
        self.control.broadcast(size, 0).wait()
        if self.rank != 0:
            payload = torch.empty(int(size.item()), dtype=torch.uint8)
        self.control.broadcast(payload, 0).wait()
        return value if self.rank == 0 else pickle.loads(payload.numpy().tobytes())

    def broadcast_bucket(self, tensors: list[torch.Tensor] | None, specs: list[TensorSpec]) -> list:
        """One bucket of tensors from rank 0 (`tensors`, matching `specs`) as one flat broadcast; every member
        gets them back (the workers: views of one new buffer, each at an aligned offset)."""
        offsets = _offsets(specs)
        if self.rank == 0:
            flat = torch.zeros(offsets[-1], dtype=torch.uint8)
            for tensor, start in zip(tensors, offsets, strict=False):
                data = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
                flat[start : start + data.numel()] = data
        else:
            flat = torch.empty(offsets[-1], dtype=torch.uint8)
        self.control.broadcast(flat, 0).wait()
        if self.rank == 0:
            return list(tensors)
        return [
            flat[start : start + spec.nbytes].view(spec.dtype).view(spec.shape)
            for spec, start in zip(specs, offsets, strict=False)
        ]

    # ------------------------------------------------------------------ results: a worker to rank 0
    def send_object(self, value, dst: int = 0) -> None:
        payload = torch.frombuffer(bytearray(pickle.dumps(value)), dtype=torch.uint8)
        self.results.send([torch.tensor([payload.numel()], dtype=torch.int64)], dst, _SIZE_TAG).wait()
        self.results.send([payload], dst, _PAYLOAD_TAG).wait()

    def recv_object(self) -> tuple[int, object]:
        """The next message from any worker: (its group rank, the value)."""
        size = torch.zeros(1, dtype=torch.int64)
        work = self.results.recv_anysource([size], _SIZE_TAG)
        work.wait()
        source = work._source_rank()
        payload = torch.empty(int(size.item()), dtype=torch.uint8)
        self.results.recv([payload], source, _PAYLOAD_TAG).wait()
        return source, pickle.loads(payload.numpy().tobytes())


def host_store(workers: int, remote: int = 0, port: int = 0) -> tuple[dist.TCPStore, Address]:
    """Rank 0's store for `workers` workers it starts and `remote` ones started apart (ranks after its own),
    on `port` (0: a free one), and the local address of it; rank 0 then makes its WorkerGroup, which waits
    until every worker has joined. With remote workers it listens on every interface."""
    host = "0.0.0.0" if remote else "127.0.0.1"
    size = workers + remote + 1
    store = dist.TCPStore(host, port, world_size=size, is_master=True, wait_for_workers=False)
    store.set("size", str(size))
    store.set("first_remote", str(workers + 1))
    return store, Address("127.0.0.1", store.port)


def _offsets(specs: list[TensorSpec], align: int = 64) -> list[int]:
    """Each tensor's byte offset in a bucket, aligned for any dtype's view, then the bucket's size."""
    offsets = [0]
    for spec in specs:
        offsets.append(offsets[-1] + -(-spec.nbytes // align) * align)
    return offsets


def buckets(specs: list[TensorSpec], bucket_bytes: int = BUCKET_BYTES) -> list[list[TensorSpec]]:
    """Consecutive tensors in buckets of up to `bucket_bytes` (a larger tensor is a bucket of its own)."""
    out: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if out[-1] and size + spec.nbytes > bucket_bytes:
            out.append([])
            size = 0
        out[-1].append(spec)
        size += spec.nbytes
    return [b for b in out if b]
