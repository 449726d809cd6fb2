"""Rollout workers with several trainer ranks: 2 gloo FSDP2 ranks and one hf worker that rank 0 starts. The
worker samples each rank's own share with the weights gathered from the shards, and the sampler / trainer
gap on a fixed batch shows when the weights reached it."""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from processes import free_port
from torch.distributed.tensor import DTensor

from lrm_fast.batching import micro_batches as M
from lrm_fast.config import TinyModelConfig, TrainConfig
from lrm_fast.data.sources import builtin_examples
from lrm_fast.data.tokenizer import build_tokenizer
from lrm_fast.kernels import token_logprobs
from lrm_fast.model.causal_lm import build_model, tiny_qwen2_config
from lrm_fast.model.fsdp import apply_fsdp
from lrm_fast.runtime import DistInfo
from lrm_fast.runtime.worker_group import TensorSpec, buckets
from lrm_fast.training.async_rollout import AsyncRollouts, Request
from lrm_fast.training.update import response_logits

TEMPERATURE = 0.8
BUCKET = 64 << 10


def _gaps(model, samples) -> torch.Tensor:
    """|log p_trainer - log p_sampler| of each of the samples' tokens (an FSDP2 forward: every rank)."""
    batch = M.collate(samples, False)
    with torch.no_grad():
        logprobs = token_logprobs(response_logits(model, batch), batch.targets, temperature=TEMPERATURE)
    return (logprobs - M.sampler_logprobs(samples)).abs()


def _gap(model, samples) -> float:
    return _gaps(model, samples).max().item()


def _move(model, rank: int) -> None:
    """A new policy: each rank moves its own shard."""
    generator = torch.Generator().manual_seed(rank)
    with torch.no_grad():
        for p in model.parameters():
            local = p.to_local() if isinstance(p, DTensor) else p
            local.add_(0.1 * torch.randn(local.shape, generator=generator))


def _partial(cfg, model, tokenizer, examples, rank: int) -> dict:
    """Partial rollouts with two ranks: batch 3 lands with the current weights, then batch 4 with moved ones
    after 6 of its 12 decode steps; each rank's share of batch 3 carries both."""
    cfg.rollout.partial_steps = 6
    pipeline = AsyncRollouts(cfg, model, tokenizer, None, dist=DistInfo(rank, 2, torch.device("cpu")))
    try:
        pipeline.request(Request(3, 1, [examples], seed=3, steps=1), model)
        _move(model, rank)
        pipeline.request(Request(4, 2, [examples], seed=4, steps=2), model)
        result = pipeline.take(3)[0]
    finally:
        pipeline.close()
    samples = result.selection.samples
    late = torch.tensor([i >= 6 for s in samples for i in range(len(s.response_ids))])
    gaps = _gaps(model, samples)
    return {
        "token_steps": {str(k): v for k, v in result.token_steps.items()},
        "late_gap": gaps[late].max().item(),
        "early_gap": gaps[~late].max().item(),
        "prompts": sorted({tuple(s.prompt_ids) for s in samples}),
    }


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    tokenizer = build_tokenizer()
    shape = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    config = tiny_qwen2_config(len(tokenizer), shape, pad_token_id=tokenizer.pad_token_id)
    model = apply_fsdp(build_model(config, seed=0), bf16=False)
    cfg = TrainConfig()
    cfg.trainer.max_staleness, cfg.trainer.num_threads = 1, 1
    cfg.rollout.group_size, cfg.rollout.max_new_tokens, cfg.rollout.temperature = 2, 12, TEMPERATURE
    examples = builtin_examples(4, "train", 0, cfg.data.difficulty)
    pipeline = AsyncRollouts(cfg, model, tokenizer, None, dist=DistInfo(rank, 2, torch.device("cpu")))
    pipeline.bucket_bytes = BUCKET  # several buckets (rollout.sync_bucket_mb counts whole MB)
    try:
        pipeline.request(Request(1, 0, [examples], seed=1), model)
        before = pipeline.take(1)[0].selection.samples
        in_sync = _gap(model, before)
        _move(model, rank)
        stale = _gap(model, before)  # the same batch, now that the trainer has moved on
        pipeline.request(Request(2, 1, [examples], seed=1), model)
        after = pipeline.take(2)[0].selection.samples
        synced = _gap(model, after)
        specs = [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]
        report = {
            "in_sync": in_sync,
            "stale": stale,
            "synced": synced,
            "prompts": sorted({tuple(s.prompt_ids) for s in before}),
            "expected": sorted({tuple(p) for p in _prompt_ids(examples[rank::2], tokenizer, cfg)}),
            "pushed": pipeline.pushed["bytes"],
            "state_bytes": sum(s.nbytes for s in specs),
            "buckets": len(buckets(specs, BUCKET)),
            "workers_alive": [p.is_alive() for p in pipeline.workers],
        }
    finally:
        pipeline.close()
    report["workers_alive_after_close"] = [p.is_alive() for p in pipeline.workers]
    report["partial"] = _partial(cfg, model, tokenizer, examples, rank)
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(report, f)
    torch.distributed.destroy_process_group()
    os._exit(0)  # FSDP2 on gloo occasionally aborts in interpreter teardown


def _prompt_ids(examples, tokenizer, cfg):
    from lrm_fast.training.assembly import encode

    return encode(examples, tokenizer, cfg)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_trainer_ranks_get_their_shares_from_one_worker_with_the_gathered_weights(tmp_path):
    mp.start_processes(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for report in reports:
        assert report["in_sync"] < 1e-5  # sampled with the weights the trainer holds
        assert report["stale"] > 1e-3  # the trainer moved on: the gap shows the old weights
        assert report["synced"] < 1e-5  # the next request carried the gathered new weights
        assert report["prompts"] == report["expected"]  # this rank's share of the prompts
        assert report["buckets"] > 1
    assert reports[0]["pushed"] == reports[1]["pushed"] == 2 * reports[0]["state_bytes"]  # two pushes
    assert reports[0]["workers_alive"] == [True] and reports[0]["workers_alive_after_close"] == [False]
    assert reports[1]["workers_alive"] == []  # only rank 0 starts workers
    assert set(map(tuple, reports[0]["prompts"])).isdisjoint(map(tuple, reports[1]["prompts"]))
    for report in reports:  # partial rollouts: each rank's share spans the landing of new weights
        partial = report["partial"]
        assert partial["token_steps"].keys() == {"1", "2"}
        assert partial["late_gap"] < 1e-5 < 1e-3 < partial["early_gap"]
        assert list(map(tuple, partial["prompts"])) == list(map(tuple, report["expected"]))
