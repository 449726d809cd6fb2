"""Partial rollouts in a rollout worker (lrm_fast/training/partial_pool.py): the pool across a real worker
process, each trainer rank's share, non-finite logits, a rollback, and a checkpoint of the pools."""

import math

import pytest
import torch
from test_async_rollouts import perturb, small_policy_and_config, trainer_logprobs

from lrm_fast.batching import micro_batches as M
from lrm_fast.data.sources import builtin_examples
from lrm_fast.training.async_rollout import AsyncRollouts, Request
from lrm_fast.training.partial_pool import PartialPool
from lrm_fast.training.rollout_worker import Sampler, WorkerSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_batch_goes_on_with_the_next_requests_weights_in_the_worker():
    """Landings every 6 decode steps of 12: batch 1's first 6 tokens come from W0, the rest from W1 (pushed
    with request 2); each token's sampler log-prob is its own weights'."""
    model, tokenizer, cfg = small_policy_and_config()
    cfg.rollout.partial_steps = 6
    examples = builtin_examples(3, "train", 0, cfg.data.difficulty)
    old = {k: v.clone() for k, v in model.state_dict().items()}
    pipeline = AsyncRollouts(cfg, model, tokenizer, None)
    try:
        pipeline.request(Request(1, 0, [examples], seed=1, steps=0), model)
        perturb(model)
        pipeline.request(Request(2, 1, [examples], seed=2, steps=1), model)
        first = pipeline.take(1)[0]
        pipeline.request(Request(3, 1, [examples], seed=3, steps=1), model)  # batch 2's second landing
        second = pipeline.take(2)[0]
    finally:
        pipeline.close()
    samples = first.selection.samples
    late = torch.tensor([i >= 6 for s in samples for i in range(len(s.response_ids))])
    assert late.any() and (~late).any()
    assert first.token_steps == {0: int((~late).sum()), 1: int(late.sum())}
    assert (first.newest, second.newest) == (1, 1)  # what a finite batch confirms to the guard
    gap = M.sampler_logprobs(samples) - trainer_logprobs(model, samples, 0.8)
    assert gap[late].abs().max() < 1e-5  # W1's tokens: W1 is the trainer's model now
    assert gap[~late].abs().max() > 1e-2  # W0's
    model.load_state_dict(old)
    old_gap = M.sampler_logprobs(samples) - trainer_logprobs(model, samples, 0.8)
    assert old_gap[~late].abs().max() < 1e-5  # and W0's tokens are W0's
    assert second.token_steps == {1: sum(len(s.response_ids) for s in second.selection.samples)}


def _sampler(ranks: int):
    model, tokenizer, cfg = small_policy_and_config()
    spec = WorkerSpec((model.config, model.generation_config), None, tokenizer, cfg, None, ranks)
    sampler = Sampler(spec)
    sampler.load(model.state_dict())
    return sampler, cfg


def test_each_trainer_rank_gets_the_share_it_samples_in_a_whole_batch():
    """With landings no closer than the longest response, the pool's shares are the whole-batch worker's."""
    sampler, cfg = _sampler(ranks=2)
    cfg.rollout.partial_steps = cfg.rollout.max_new_tokens
    request = Request(1, 0, [builtin_examples(4, "train", 0, cfg.data.difficulty)], seed=5)
    (result,) = PartialPool(sampler, rank=1).land(request)
    whole = sampler.sample(request)
    assert len(result.selections) == len(whole) == 2
    for pooled, alone in zip(result.selections, whole, strict=True):
        assert [s.prompt_ids for s in pooled.samples] == [s.prompt_ids for s in alone.samples]
        assert [s.response_ids for s in pooled.samples] == [s.response_ids for s in alone.samples]
        assert [s.reward for s in pooled.samples] == [s.reward for s in alone.samples]
        assert pooled.generated_tokens == alone.generated_tokens
    assert result.token_steps == {0: sum(s.generated_tokens for s in whole)}


def test_non_finite_logits_end_every_request_in_the_pool_with_no_batch():
    sampler, cfg = _sampler(ranks=1)
    cfg.rollout.partial_steps = 4
    examples = builtin_examples(2, "train", 0, cfg.data.difficulty)
    pool = PartialPool(sampler, rank=1)
    assert pool.land(Request(1, 0, [examples], seed=1)) == []  # 12 tokens: not ended in 4 steps
    broken = {k: torch.full_like(v, math.nan) for k, v in sampler.model.state_dict().items()}
    sampler.load(broken)
    results = pool.land(Request(2, 1, [examples], seed=2, steps=1))
    assert [(r.index, r.selections) for r in results] == [(1, None), (2, None)]
    assert [r.newest for r in results] == [1, 1]  # blamed on the weights whose logits were non-finite
    assert pool.decoder.empty and not pool.landed
    sampler.load(small_policy_and_config()[0].state_dict())  # the rolled-back weights: the pool goes on
    cfg.rollout.partial_steps = 12
    assert [r.index for r in pool.land(Request(3, 2, [examples], seed=3, steps=2))] == [3]


def test_a_rollback_drops_the_pools_and_samples_again_with_the_restored_weights():
    model, tokenizer, cfg = small_policy_and_config()
    cfg.rollout.partial_steps = 6
    examples = builtin_examples(2, "train", 0, cfg.data.difficulty)
    restored = {k: v.clone() for k, v in model.state_dict().items()}
    pipeline = AsyncRollouts(cfg, model, tokenizer, None)
    try:
        perturb(model)  # the update a rollback will undo
        for index in (1, 2):
            pipeline.request(Request(index, 3, [examples], seed=index, steps=3), model)
        model.load_state_dict(restored)
        pipeline.resubmit(model, version=2, steps=2)
        pipeline.request(Request(3, 2, [examples], seed=3, steps=2), model)  # batch 2's second landing
        results = [pipeline.take(i)[0] for i in (1, 2)]
    finally:
        pipeline.close()
    assert [(r.index, r.version, r.newest, r.token_steps.keys()) for r in results] == [
        (1, 2, 2, {2}),
        (2, 2, 2, {2}),
    ]
    for result in results:
        samples = result.selection.samples
        gap = M.sampler_logprobs(samples) - trainer_logprobs(model, samples, 0.8)
        assert gap.abs().max() < 1e-5


def test_a_checkpoint_saves_the_pools_and_a_resume_goes_on_from_them(tmp_path):
    """A checkpoint in the middle of batch 1 (its tokens from W0 and W1 so far), restored into a new pipeline:
    batches 1 and 2 come out as in the uninterrupted pipeline."""
    model, tokenizer, cfg = small_policy_and_config()
    cfg.rollout.partial_steps = 4
    cfg.trainer.max_staleness = 2
    examples = builtin_examples(3, "train", 0, cfg.data.difficulty)
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def weights(version):
        model.load_state_dict(start)
        torch.manual_seed(version)
        if version:
            perturb(model)
        return model

    def requests(pipeline, versions):
        for index, version in versions:
            pipeline.request(Request(index, version, [examples], seed=index, steps=version), weights(version))

    runs = {}
    for resume in (False, True):
        pipeline = AsyncRollouts(cfg, model, tokenizer, None)
        try:
            requests(pipeline, [(1, 0), (2, 1)])
            if resume:
                state = pipeline.state_dict()
                pipeline.close()
                torch.save(state, tmp_path / "state.pt")
                pipeline = AsyncRollouts(cfg, model, tokenizer, None)
                pipeline.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
            requests(pipeline, [(3, 2), (4, 3)])
            runs[resume] = [pipeline.take(i)[0] for i in (1, 2)]
        finally:
            pipeline.close()
    assert runs[True][0].token_steps.keys() == {0, 1, 2}  # batch 1 spans the checkpoint's landings
    for whole, resumed in zip(runs[False], runs[True], strict=True):
        assert whole.token_steps == resumed.token_steps
        a, b = whole.selection.samples, resumed.selection.samples
        assert [s.response_ids for s in a] == [s.response_ids for s in b]
        torch.testing.assert_close(M.sampler_logprobs(a), M.sampler_logprobs(b), rtol=0, atol=0)
