"""FSDP2 on 2 CPU ranks (gloo) trains exactly like one process on the same data and seed."""

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
from lrm_fast.data.tokenizer import build_tokenizer
from lrm_fast.model.fsdp import apply_fsdp, gathered_for_generation
from lrm_fast.rollout import SamplingParams
from lrm_fast.rollout.hf import HFRolloutBackend
from lrm_fast.training.update import policy_update

GROUP, GROUPS, STEPS = 4, 6, 3
LOSS = LossConfig(entropy_coef=0.01, micro_batch_tokens=48, backend="torch")


def _train(model, rank: int, world_size: int) -> list[dict]:
    """STEPS updates on fixed batches; this rank takes every world_size-th group, as the trainer does."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    history = []
    for step in range(STEPS):
        samples = synthetic_samples(GROUPS, GROUP, seed=step)
        groups = [samples[i : i + GROUP] for i in range(0, len(samples), GROUP)]
        mine = [s for g in groups[rank::world_size] for s in g]
        B.assign_advantages(mine, GROUP, "std")
        B.assign_weights(mine, "seq_mean_token_mean", B.local_normalisers(mine).all_reduce(), 10)
        batches = [M.collate(mb, False) for mb in M.micro_batches(mine, LOSS.micro_batch_tokens, False)]
        result = policy_update(model, None, optimizer, batches, LOSS, temperature=1.0, grad_clip=1.0)
        history.append({"loss": result.loss, "grad_norm": result.grad_norm, **result.stats})
    return history


def _worker(rank: int, world_size: int, port: int, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    model = apply_fsdp(tiny_model(seed=0), bf16=False)
    # Ranks stop sampling at different steps (different prompts, EOS drawn at random): this must not
    # deadlock FSDP's collectives.
    backend = HFRolloutBackend(model, build_tokenizer(), eos_token_ids=[3])
    prompts = [[5 + rank, 6, 7]] if rank == 0 else [[9, 10], [11, 12, 13]]
    with gathered_for_generation(model):
        rollouts = backend.generate(prompts, group_size=2, params=SamplingParams(12, seed=rank))
    history = _train(model, rank, world_size)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"history": history, "rollouts": len(rollouts)}, f)
    torch.distributed.destroy_process_group()
    os._exit(0)  # FSDP2 on gloo occasionally aborts in interpreter teardown


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_two_ranks_match_single_process(tmp_path):
    out = tmp_path / "rank0.json"
    mp.start_processes(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    distributed = json.loads(out.read_text())
    assert distributed["rollouts"] == 2
    single = _train(tiny_model(seed=0), rank=0, world_size=1)
    assert len(distributed["history"]) == STEPS
    for got, expected in zip(distributed["history"], single, strict=True):
        for key in ("loss", "grad_norm", "entropy", "kept_tokens"):
            assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
