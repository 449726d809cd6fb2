"""torch.distributed set-up and FSDP2, nothing home-made: one process without torchrun, one rank per
device (or per CPU process, with gloo) under torchrun, or under srun when SLURM starts one task per GPU
(Hydra's submitit launcher does): SLURM's variables then stand in for torchrun's."""

import os
import re
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group torchrun (or srun) describes (WORLD_SIZE > 1), else run as a single process."""
    os.environ.update(slurm_rank_env(os.environ))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        _OWNED_GROUP.append(True)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistInfo(rank, world_size, device)


def slurm_rank_env(environ: Mapping[str, str]) -> dict[str, str]:
    """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) for a process that
    srun started as one of several tasks; the ones already set are left out.

    Empty under torchrun (`srun ... torchrun` keeps torchrun's ranks) and outside a multi-task srun step:
    SLURM_STEP_NUM_TASKS exists only inside a step, so one process run straight from a batch script or an
    salloc shell never waits for peers that were not started. Task 0 runs on the step's first node; the
    port comes from the job id, so two jobs sharing a node do not collide, and stays below Linux's
    ephemeral ports (32768 up).
    """
    if "RANK" in environ or "WORLD_SIZE" in environ:
        return {}
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS", "1"))
    if tasks <= 1:
        return {}
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ["SLURM_JOB_NODELIST"]
    env = {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": str(tasks),
        "LOCAL_RANK": environ["SLURM_LOCALID"],
        "MASTER_ADDR": first_host(nodelist),
        "MASTER_PORT": str(15000 + int(environ["SLURM_JOB_ID"]) % 15000),
    }
    return {key: value for key, value in env.items() if key not in environ}


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list, as `scontrol show hostnames` prints it first:
    "gpu[07-09,12],cpu3" -> "gpu07" (first entry, each bracket replaced by its first value)."""
    entry = re.match(r"(?:[^,\[]|\[[^\]]*\])+", nodelist)[0]
    return re.sub(r"\[([^\],-]+)[^\]]*\]", r"\1", entry)


_OWNED_GROUP: list[bool] = []  # set when init_distributed created the default group


def close_distributed() -> None:
    """Destroy the default group if we made it. A single-process vLLM engine makes its own (world of 1)
    and tears it down itself at exit; destroying it first makes that teardown fail."""
    if _OWNED_GROUP and dist.is_initialized():
        dist.destroy_process_group()
        _OWNED_GROUP.clear()


def all_reduce(tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """All-reduce a small host tensor in place (a no-op without a process group); nccl needs a device copy."""
    if not dist.is_initialized():
        return tensor
    if dist.get_backend() == "nccl":
        on_device = tensor.cuda()
        dist.all_reduce(on_device, op=op)
        tensor.copy_(on_device.cpu())
    else:
        dist.all_reduce(tensor, op=op)
    return tensor


def apply_fsdp(model: torch.nn.Module, bf16: bool) -> torch.nn.Module:
    """FSDP2 over every decoder block, then the root (embeddings, final norm, head)."""
    # Params stay fp32 for the optimizer; compute and all-gathers in bf16 halve traffic, gradients are
    # reduced in fp32 so that small updates are not rounded away.
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kwargs = {"mp_policy": mp} if mp else {}
    for block in model.model.layers:
        # One all-gather per block bounds the unsharded memory to a block at a time.
        fully_shard(block, **kwargs)
    # The root keeps embeddings and the tied head together in one group (they share a weight).
    fully_shard(model, **kwargs)
    return model


def gradient_scale() -> float:
    """Factor on each rank's loss before backward so that FSDP's gradient average is a sum.

    The loss is already a global sum over ranks (global normalisers), so gradients must add up; FSDP
    averages them. Scaling the loss by the world size works with every backend (gloo has no pre-scaled
    sum reduction).
    """
    return float(dist.get_world_size()) if dist.is_initialized() else 1.0


@contextmanager
def gathered_for_generation(model: torch.nn.Module):
    """Keep FSDP2 parameters unsharded while sampling.

    Sampling runs a different number of forward passes on each rank (each stops when its own responses
    end), so per-forward all-gathers would deadlock; one explicit unshard per rollout avoids that and is
    cheaper too. A no-op for a model without FSDP.
    """
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield model
    finally:
        for module in modules:
            module.reshard()
            # FSDP2 keeps the root unsharded after forward (its backward comes first); blocks reshard.
            module.set_reshard_after_forward(module is not model, recurse=False)


class ShardedBackend:
    """A rollout backend whose prompts are split over the ranks: each rank samples every world_size-th
    prompt (seeded with seed * world_size + rank), and every rank gets all rollouts back, in order.

    Evaluation uses it so that every rank holds the same results while sampling only its share. Without
    a process group it is the wrapped backend itself.
    """

    def __init__(self, backend, rank: int, world_size: int):
        self.backend, self.rank, self.world_size = backend, rank, world_size

    def __getattr__(self, name):  # model, tokenizer, eos_token_ids, ... of the wrapped backend
        return getattr(self.backend, name)

    def generate(self, prompts: list[list[int]], group_size: int, params) -> list:
        if self.world_size == 1:
            return self.backend.generate(prompts, group_size, params)
        seed = None if params.seed is None else params.seed * self.world_size + self.rank
        mine = prompts[self.rank :: self.world_size]
        # Called even with no prompts: ranks that share a tensor-parallel engine must call it together.
        rollouts = self.backend.generate(mine, group_size, replace(params, seed=seed))
        shards = [None] * self.world_size
        dist.all_gather_object(shards, rollouts)
        ordered = []
        for i in range(len(prompts)):  # prompt i is the (i // world)-th prompt of rank i % world
            shard, position = shards[i % self.world_size], i // self.world_size
            ordered += shard[position * group_size : (position + 1) * group_size]
        return ordered
