"""torch.distributed set-up, nothing home-made: one process without torchrun, one rank per device (or per
CPU process, with gloo) under torchrun, or under srun when SLURM starts one task per GPU (Hydra's
submitit launcher does): SLURM's variables then stand in for torchrun's."""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def broadcast_from_main(value):
    """The main rank's value of a picklable object, on every rank (e.g. the run directory)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
