"""The rollout process of asynchronous GRPO: the weights it samples with, and the off-policy correction
of its stale samples (decoupled clip, truncated importance weight), against hand-computed values."""

import math

import pytest
import torch
from trainer_fixtures import synthetic_samples, tiny_model

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import LossConfig, TinyModelConfig, TrainConfig
from lrm_fast.data.sources import builtin_examples
from lrm_fast.data.tokenizer import build_tokenizer
from lrm_fast.kernels import token_logprobs
from lrm_fast.model.causal_lm import build_model, tiny_qwen2_config
from lrm_fast.training.async_rollout import AsyncRollouts, Request
from lrm_fast.training.sampler_correction import SamplerCorrection
from lrm_fast.training.step_metrics import covered_seconds
from lrm_fast.training.update import micro_batch_loss, response_logits

pytestmark = pytest.mark.usefixtures("one_thread")


def trainer_logprobs(model, samples, temperature):
    batch = M.collate(samples, False)
    with torch.no_grad():
        return token_logprobs(response_logits(model, batch), batch.targets, temperature=temperature)


def small_policy_and_config():
    tokenizer = build_tokenizer()
    shape = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    config = tiny_qwen2_config(len(tokenizer), shape, pad_token_id=tokenizer.pad_token_id)
    model = build_model(config, seed=0)
    cfg = TrainConfig()
    cfg.trainer.max_staleness, cfg.trainer.num_threads = 1, 1
    cfg.rollout.group_size, cfg.rollout.max_new_tokens, cfg.rollout.temperature = 2, 12, 0.8
    return model, tokenizer, cfg


def perturb(model, scale=0.1):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def test_pushed_weights_reach_the_rollout_process():
    model, tokenizer, cfg = small_policy_and_config()
    examples = builtin_examples(3, "train", 0, cfg.data.difficulty)
    pipeline = AsyncRollouts(cfg, model, tokenizer, None)
    try:
        pipeline.request(Request(1, 0, [examples], seed=1), model)
        before = pipeline.take(1)[0].selection.samples
        perturb(model)  # a new policy: the next request must carry it
        pipeline.request(Request(2, 1, [examples], seed=1), model)
        after = pipeline.take(2)[0].selection.samples
    finally:
        pipeline.close()
    assert not any(p.is_alive() for p in pipeline.workers)
    sampled = M.sampler_logprobs(after)
    torch.testing.assert_close(sampled, trainer_logprobs(model, after, 0.8), rtol=0, atol=1e-5)
    # The first batch came from the old weights, which the trainer no longer has.
    stale = M.sampler_logprobs(before) - trainer_logprobs(model, before, 0.8)
    assert stale.abs().max() > 1e-2


def test_a_rollback_samples_the_batches_in_flight_again_with_the_restored_weights():
    model, tokenizer, cfg = small_policy_and_config()
    examples = builtin_examples(2, "train", 0, cfg.data.difficulty)
    pipeline = AsyncRollouts(cfg, model, tokenizer, None)
    try:
        restored = {k: v.clone() for k, v in model.state_dict().items()}
        perturb(model)  # the update a rollback will undo
        for index in (1, 2):
            pipeline.request(Request(index, 3, [examples], seed=index), model)
        model.load_state_dict(restored)
        pipeline.resubmit(model, version=2, steps=0)
        results = [pipeline.take(1)[0], pipeline.take(2)[0]]
    finally:
        pipeline.close()
    assert [(r.index, r.version) for r in results] == [(1, 2), (2, 2)]
    assert pipeline.push_metrics()["async/push_bytes"] > 0  # the resubmission's push is counted
    for result in results:
        samples = result.selection.samples
        gap = M.sampler_logprobs(samples) - trainer_logprobs(model, samples, 0.8)
        assert gap.abs().max() < 1e-5
    assert not pipeline.sent and not pipeline.outstanding


def test_two_workers_share_the_batches_and_sample_what_one_worker_does():
    """Batch n goes to worker n mod 2, and every worker gets every push: the two sample batches 1-3 (the
    third after new weights) exactly as one worker does, each with the weights sent before its request."""
    model, tokenizer, cfg = small_policy_and_config()
    examples = builtin_examples(2, "train", 0, cfg.data.difficulty)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    runs = {}
    for workers in (1, 2):
        model.load_state_dict(start)
        cfg.trainer.rollout_workers = workers
        pipeline = AsyncRollouts(cfg, model, tokenizer, None)
        try:
            for index in (1, 2):
                pipeline.request(Request(index, 0, [examples], seed=index), model)
            torch.manual_seed(0)
            perturb(model)
            pipeline.request(Request(3, 1, [examples], seed=3), model)
            runs[workers] = [pipeline.take(i)[0] for i in (1, 2, 3)]
        finally:
            pipeline.close()
        assert len(pipeline.workers) == workers
        assert not any(p.is_alive() for p in pipeline.workers)
    assert [r.worker for r in runs[2]] == [2, 1, 2]  # group ranks: batch n on worker 1 + n mod 2
    for one, two in zip(runs[1], runs[2], strict=True):
        a, b = one.selection.samples, two.selection.samples
        assert [s.response_ids for s in a] == [s.response_ids for s in b]
        torch.testing.assert_close(M.sampler_logprobs(a), M.sampler_logprobs(b), rtol=0, atol=0)
    third = runs[2][2].selection.samples  # sampled with the pushed new weights
    torch.testing.assert_close(
        M.sampler_logprobs(third), trainer_logprobs(model, third, 0.8), rtol=0, atol=1e-5
    )


def test_batches_in_flight_resume_only_with_the_trainer_ranks_that_they_were_sampled_for():
    model, tokenizer, cfg = small_policy_and_config()
    examples = builtin_examples(2, "train", 0, cfg.data.difficulty)
    pipeline = AsyncRollouts(cfg, model, tokenizer, None)
    try:
        pipeline.request(Request(1, 0, [examples], seed=1), model)
        state = pipeline.state_dict()
        assert state["trainer_ranks"] == 1 and [r.index for r in state["results"]] == [1]
        with pytest.raises(ValueError, match=r"sampled as 2 trainer ranks' shares: resume it with 2 ranks"):
            pipeline.load_state_dict({**state, "trainer_ranks": 2})
        # A checkpoint from before results held every rank's share: its one selection is taken as rank 0's.
        old = state["results"][0]
        vars(old)["selection"] = vars(old).pop("selections")[0]
        pipeline.load_state_dict({"results": [old], "requests": state["requests"]})
        assert pipeline.take(1)[0].selection is not None
    finally:
        pipeline.close()


def test_overlap_counts_the_union_of_the_workers_sampling_spans():
    assert covered_seconds([(0.0, 2.0), (1.0, 3.0), (5.0, 9.0)], start=1.5, end=6.0) == pytest.approx(2.5)
    assert covered_seconds([], 0.0, 1.0) == 0.0


@pytest.mark.parametrize("tis_cap", [1.2, math.inf], ids=["capped", "uncapped"])
def test_decoupled_clip_and_importance_weight_by_hand(tis_cap):
    """Behaviour mu (the sampler), proximal pi_prox (old_logprobs) and the trained pi_theta all differ:
    the clip acts on pi_theta / pi_prox, the weight is min(pi_prox / mu, tis_cap)."""
    model = tiny_model()
    samples = synthetic_samples(num_groups=2, group_size=4)
    B.assign_advantages(samples, 4, "std")
    B.assign_weights(samples, "token_mean", B.local_normalisers(samples), sum_norm_length=10)
    batch = M.collate(samples, False)
    current = trainer_logprobs(model, samples, 1.0)
    n = len(current)
    shift = torch.linspace(-0.5, 0.5, n)  # log pi_theta - log pi_prox: ratios 0.61 .. 1.65, some clipped
    gap = torch.linspace(0.4, -0.4, n)  # log pi_prox - log mu: weights 1.49 .. 0.67, some truncated
    batch.old_logprobs = current - shift
    batch.sampler_logprobs = batch.old_logprobs - gap
    loss_cfg = LossConfig(backend="torch", clip_low=0.2, clip_high=0.28, kl_coef=0.0, entropy_coef=0.0)
    loss, _ = micro_batch_loss(model, None, batch, loss_cfg, 1.0, correction=SamplerCorrection(cap=tis_cap))

    rho, advantage = shift.exp(), batch.advantages
    weight = gap.exp().clamp(max=tis_cap)
    per_token = torch.maximum(-advantage * rho, -advantage * rho.clamp(0.8, 1.28))
    expected = (batch.weights * weight * per_token).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-8)
    clipped = (-advantage * rho.clamp(0.8, 1.28) > -advantage * rho) & (advantage != 0)
    assert 0 < clipped.sum() < n
