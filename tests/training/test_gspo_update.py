"""loss.ratio_level=sequence (GSPO) in the update: the sequence ratio over mini-batches and epochs, the same
update whatever the layout (padded or packed), the cut into micro-batches or the head (fused or not), and
the sequence-ratio metrics reduced over micro-batches and steps."""

import pytest
import torch
from trainer_fixtures import synthetic_samples, tiny_model

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import LossConfig
from lrm_fast.config.choices import LRSchedule
from lrm_fast.model.optim import adamw
from lrm_fast.training.update import (
    UpdateResult,
    combine_steps,
    policy_update,
    policy_updates,
    record_old_logprobs,
)

pytestmark = pytest.mark.usefixtures("one_thread")

G = 4
GSPO = LossConfig(
    backend="torch", ratio_level="sequence", aggregation="seq_mean_token_mean", clip_low=3e-4, clip_high=4e-4
)


def _mini_batches(loss: LossConfig, count: int = 2) -> list[list[M.MicroBatch]]:
    """Six groups in `count` mini-batches with their own normalisers, cut into micro-batches of
    loss.micro_batch_tokens, padded or packed as loss.packing says."""
    samples = synthetic_samples(num_groups=6, group_size=G, seed=3)
    B.assign_advantages(samples, G, "std")
    minis = M.mini_batches(samples, G, count)
    result = []
    for mini, normalisers in zip(minis, B.all_reduced([B.local_normalisers(m) for m in minis]), strict=True):
        B.assign_weights(mini, loss.aggregation, normalisers, sum_norm_length=10)
        cut = M.micro_batches(mini, loss.micro_batch_tokens, loss.packing)
        result.append([M.collate(mb, loss.packing) for mb in cut])
    return result


def _optimizer(model):
    return adamw(
        model.parameters(), lr=3e-2, weight_decay=0.0, warmup_steps=0, steps=10, schedule=LRSchedule.constant
    )[0]


def _update(loss: LossConfig, epochs: int = 1):
    """The update by plain SGD, whose step is linear in the gradient: float-level differences between two
    ways of computing it stay float-level (Adam's normalised steps amplify them where a gradient is ~0)."""
    torch.manual_seed(0)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    result = policy_updates(model, None, optimizer, _mini_batches(loss), loss, 1.0, 1.0, epochs=epochs)
    return result, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_the_first_step_is_on_policy_and_the_second_clips_whole_sequences():
    torch.manual_seed(0)
    model = tiny_model()
    optimizer = _optimizer(model)
    minis = _mini_batches(GSPO)
    record_old_logprobs(model, [b for mini in minis for b in mini], GSPO, 1.0)
    first = policy_update(model, None, optimizer, minis[0], GSPO, 1.0, grad_clip=1.0)
    second = policy_update(model, None, optimizer, minis[1], GSPO, 1.0, grad_clip=1.0)
    assert first.stats["seq_ratio_min"] == first.stats["seq_ratio_max"] == 1.0
    assert first.stats["seq_clip_fraction"] == 0.0 and first.stats["clip_fraction"] == 0.0
    assert first.stats["kept_sequences"] + second.stats["kept_sequences"] == 6 * G
    s = second.stats
    assert s["seq_ratio_min"] < s["seq_ratio_mean"] < s["seq_ratio_max"]
    assert s["seq_ratio_min"] < 1 - 3e-4 or s["seq_ratio_max"] > 1 + 4e-4
    assert 0 < s["seq_clip_fraction"] <= 1 and s["clip_fraction"] > 0


@pytest.mark.parametrize(
    "variant",
    [
        {"packing": True},
        {"micro_batch_tokens": 400},  # one micro-batch per mini-batch instead of several
        {"fused_head": True},
    ],
    ids=["packed", "one_micro_batch", "fused_head"],
)
def test_the_update_is_the_same_whatever_the_layout(variant):
    """Two mini-batches x two epochs (the ratios move and the clip binds): padded micro-batches of 40
    tokens against each variant, same parameters after the update and the same sequence metrics."""
    base = LossConfig(**{**vars(GSPO), "micro_batch_tokens": 40})
    result, params = _update(base, epochs=2)
    other, other_params = _update(LossConfig(**{**vars(base), **variant}), epochs=2)
    assert result.steps == 4 and result.stats["seq_clip_fraction"] > 0
    torch.testing.assert_close(other_params, params, rtol=1e-4, atol=1e-6)
    for key in ("seq_ratio_mean", "seq_ratio_min", "seq_ratio_max", "seq_clip_fraction", "kept_sequences"):
        assert other.stats[key] == pytest.approx(result.stats[key], rel=1e-5, abs=1e-7), key


def test_one_step_per_batch_gspo_is_grpo():
    """On policy every ratio is 1: the sequence level takes GRPO's step, for the same aggregation."""
    token = LossConfig(**{**vars(GSPO), "ratio_level": "token"})
    (gspo, gspo_params), (grpo, grpo_params) = (_update_once(loss) for loss in (GSPO, token))
    torch.testing.assert_close(gspo_params, grpo_params, rtol=1e-6, atol=1e-8)
    assert gspo.loss == pytest.approx(grpo.loss, rel=1e-6, abs=1e-9)


def _update_once(loss: LossConfig):
    torch.manual_seed(0)
    model = tiny_model()
    optimizer = _optimizer(model)
    (batches,) = _mini_batches(loss, count=1)
    result = policy_updates(model, None, optimizer, [batches], loss, 1.0, 1.0)
    return result, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_a_batchs_steps_weight_the_sequence_means_by_their_sequences():
    """Mini-batches of 1 and 3 sequences: the batch's sequence means are over its 4 sequences, the
    extremes over both steps, the count their sum."""
    stats = dict(clip_fraction=0.0, dual_clip_fraction=0.0, approx_kl=0.0, ref_kl=0.0, entropy=1.0)
    steps = [
        UpdateResult(0.1, 1.0, None, stats | dict(kept_tokens=5.0, kept_sequences=1.0, seq_ratio_mean=1.0,
                     seq_ratio_min=1.0, seq_ratio_max=1.0, seq_clip_fraction=0.0)),
        UpdateResult(0.1, 1.0, None, stats | dict(kept_tokens=15.0, kept_sequences=3.0, seq_ratio_mean=1.2,
                     seq_ratio_min=0.9, seq_ratio_max=1.5, seq_clip_fraction=2 / 3)),
    ]  # fmt: skip
    combined = combine_steps(steps).stats
    assert combined["seq_ratio_mean"] == pytest.approx((1.0 + 3 * 1.2) / 4)
    assert combined["seq_clip_fraction"] == pytest.approx(2 / 4)
    assert (combined["seq_ratio_min"], combined["seq_ratio_max"], combined["kept_sequences"]) == (
        0.9,
        1.5,
        4.0,
    )
