"""The mini-batch schedule under FSDP2 on 2 CPU ranks (gloo): pi_old recorded with uneven micro-batch
counts per rank, two optimizer steps per rollout batch, the same numbers as one process."""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from processes import free_port
from trainer_fixtures import synthetic_samples, tiny_model

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import LossConfig
from lrm_fast.model.fsdp import apply_fsdp
from lrm_fast.training.update import policy_updates

GROUP, GROUPS, STEPS, MINI_BATCHES = 4, 6, 2, 2
LOSS = LossConfig(entropy_coef=0.01, micro_batch_tokens=32, backend="torch")


def _local_mini_batches(step: int, rank: int, world_size: int) -> list[list[B.Sample]]:
    """This rank's groups (every world_size-th, as the trainer takes them) cut into its mini-batches."""
    samples = synthetic_samples(GROUPS, GROUP, seed=step)
    B.assign_advantages(samples, GROUP, "std")
    groups = [samples[i : i + GROUP] for i in range(0, len(samples), GROUP)]
    mine = [s for g in groups[rank::world_size] for s in g]
    return M.mini_batches(mine, GROUP, MINI_BATCHES)


def _train(model, minis_of_step) -> list[dict]:
    """STEPS rollout batches of MINI_BATCHES optimizer steps each, every mini-batch normalised on its own."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.01)
    history = []
    for step in range(STEPS):
        minis = minis_of_step(step)
        batches = []
        for mini, normalisers in zip(
            minis, B.all_reduced([B.local_normalisers(m) for m in minis]), strict=True
        ):
            B.assign_weights(mini, "token_mean", normalisers, 10)
            batches.append(
                [M.collate(mb, False) for mb in M.micro_batches(mini, LOSS.micro_batch_tokens, False)]
            )
        result = policy_updates(model, None, optimizer, batches, LOSS, 1.0, grad_clip=1.0)
        history.append(
            {"loss": result.loss, "grad_norm": result.grad_norm, "steps": result.steps, **result.stats}
        )
    return history


def _worker(rank: int, world_size: int, port: int, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    model = apply_fsdp(tiny_model(seed=0), bf16=False)
    history = _train(model, lambda step: _local_mini_batches(step, rank, world_size))
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(history, f)
    torch.distributed.destroy_process_group()
    os._exit(0)  # FSDP2 on gloo occasionally aborts in interpreter teardown


def _global_mini_batches(step: int) -> list[list[B.Sample]]:
    """Mini-batch k of every rank together: the global mini-batch k that one process trains on."""
    per_rank = [_local_mini_batches(step, rank, 2) for rank in range(2)]
    return [per_rank[0][k] + per_rank[1][k] for k in range(MINI_BATCHES)]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_ranks_take_the_same_mini_batch_steps_as_one_process(tmp_path):
    counts = [
        sum(
            len(M.micro_batches(mini, LOSS.micro_batch_tokens, False))
            for mini in _local_mini_batches(0, rank, 2)
        )
        for rank in range(2)
    ]
    assert counts[0] != counts[1]  # the ranks' pi_old passes differ in number: padding passes run
    out = tmp_path / "rank0.json"
    mp.start_processes(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    distributed = json.loads(out.read_text())
    single = _train(tiny_model(seed=0), _global_mini_batches)
    assert single[-1]["clip_fraction"] > 0  # the second steps were off-policy
    for got, expected in zip(distributed, single, strict=True):
        assert got["steps"] == expected["steps"] == MINI_BATCHES
        for key in ("loss", "grad_norm", "clip_fraction", "approx_kl", "kept_tokens"):
            assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
