"""The KL in the reward (reward.kl_coef): the study's apply_kl_penalty and GRPO advantage, written out as its
verl runs them, against ours; the summed log-ratios from the models; what the group logic still sees."""

import pytest
import torch
from trainer_fixtures import synthetic_samples, tiny_model

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import LossConfig, RegimeConfig
from lrm_fast.kernels import token_logprobs
from lrm_fast.levers.regimes import apply_regime
from lrm_fast.levers.scoring import kl_in_reward
from lrm_fast.training.update import response_log_ratios, response_logits

G = 4


def _study_advantages(scores, old_log_prob, ref_log_prob, response_mask, group_size, beta):
    """ray_trainer.py apply_kl_penalty (kl_penalty="kl": old_log_prob - ref_log_prob, masked) on the
    token-level scores (the reward manager puts each score on the response's last token), then
    core_algos.compute_grpo_outcome_advantage: the summed token rewards, normalised per group by the mean
    and torch.std (unbiased) + 1e-6, broadcast over the response."""
    last = response_mask.sum(-1).long() - 1
    token_level_scores = torch.zeros_like(old_log_prob)
    token_level_scores[torch.arange(len(scores)), last] = scores
    kld = (old_log_prob - ref_log_prob) * response_mask
    token_level_rewards = token_level_scores - beta * kld
    outcome = token_level_rewards.sum(dim=-1).view(-1, group_size)
    normalised = (outcome - outcome.mean(-1, keepdim=True)) / (outcome.std(-1, keepdim=True) + 1e-6)
    return normalised.reshape(-1, 1) * response_mask


def test_advantages_equal_the_studys():
    samples = synthetic_samples(num_groups=3, group_size=G)  # group 2 is zero-variance (all correct)
    B.assign_advantages(samples, G, "std")
    width = max(len(s.response_ids) for s in samples)
    mask = torch.zeros(len(samples), width)
    for i, s in enumerate(samples):
        mask[i, : len(s.response_ids)] = 1
    generator = torch.Generator().manual_seed(0)
    old_log_prob = -torch.rand(len(samples), width, generator=generator, dtype=torch.float64) * mask
    ref_log_prob = -torch.rand(len(samples), width, generator=generator, dtype=torch.float64) * mask
    scores = torch.tensor([s.reward for s in samples], dtype=torch.float64)
    study = _study_advantages(scores, old_log_prob, ref_log_prob, mask, G, beta=0.001)

    log_ratios = ((old_log_prob - ref_log_prob) * mask).sum(-1).tolist()
    penalty = kl_in_reward(samples, log_ratios, 0.001, G, "std")
    ours = torch.tensor([s.advantage for s in samples], dtype=torch.float64)
    torch.testing.assert_close(ours, study[:, 0], rtol=1e-4, atol=1e-6)
    assert penalty == pytest.approx(-0.001 * sum(log_ratios))
    # The KL noise gives the all-correct group advantages; it still counts as zero-variance (by the task
    # reward), and since its advantages are not 0, dropping zero-variance groups keeps it in the update.
    zero_variance = samples[2 * G : 3 * G]
    assert all(s.zero_variance for s in zero_variance) and any(s.advantage != 0 for s in zero_variance)
    apply_regime(samples, "full", RegimeConfig(drop_zero_variance=True))
    assert all(s.forward for s in samples)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("packing", "fused_head", "budget"),
    [(False, False, 10_000), (True, False, 30), (False, True, 30)],
    ids=["padded", "packed_micro_batches", "fused_head"],
)
def test_summed_log_ratios_from_the_models(packing, fused_head, budget):
    policy, reference = tiny_model(seed=0), tiny_model(seed=1)
    samples = synthetic_samples(num_groups=2, group_size=G)
    samples.append(B.Sample([4, 5], [], reward=0.0, correct=False))  # an empty response: 0
    loss_cfg = LossConfig(packing=packing, fused_head=fused_head, micro_batch_tokens=budget, backend="torch")
    ratios = response_log_ratios(policy, reference, samples, loss_cfg, temperature=0.7)
    expected = []
    for s in samples[:-1]:
        batch = M.collate([s], False)
        with torch.no_grad():
            logp = token_logprobs(response_logits(policy, batch), batch.targets, temperature=0.7)
            ref_logp = token_logprobs(response_logits(reference, batch), batch.targets, temperature=0.7)
        expected.append((logp - ref_logp).sum().item())
    assert ratios[:-1] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert ratios[-1] == 0.0
