"""The mini-batch schedule (trainer.mini_batches, trainer.epochs; lrm_fast/training/update.py): several
optimizer steps per rollout batch against pi_old recorded once before the first of them."""

from dataclasses import replace

import pytest
import torch
from trainer_fixtures import synthetic_samples, tiny_model

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import LossConfig, TrainConfig
from lrm_fast.config.choices import LRSchedule
from lrm_fast.config.validation import validate
from lrm_fast.model.optim import adamw
from lrm_fast.training.guard import DivergenceGuard
from lrm_fast.training.update import policy_update, policy_updates, record_old_logprobs

pytestmark = pytest.mark.usefixtures("one_thread")

G = 4
LOSS = LossConfig(backend="torch", entropy_coef=0.01)


def _mini_batches(count: int, seed: int = 0) -> list[list[M.MicroBatch]]:
    """Six groups cut into `count` mini-batches, each weighted with its own normalisers (token mean) and
    cut into micro-batches, as the trainer does."""
    samples = synthetic_samples(num_groups=6, group_size=G, seed=seed)
    B.assign_advantages(samples, G, "std")
    minis = M.mini_batches(samples, G, count)
    result = []
    for mini, normalisers in zip(minis, B.all_reduced([B.local_normalisers(m) for m in minis]), strict=True):
        B.assign_weights(mini, "token_mean", normalisers, sum_norm_length=10)
        result.append([M.collate(mb, False) for mb in M.micro_batches(mini, 40, False)])
    return result


def _optimizer(model, lr: float):
    return adamw(
        model.parameters(), lr=lr, weight_decay=0.0, warmup_steps=0, steps=10, schedule=LRSchedule.constant
    )[0]


def test_mini_batches_are_contiguous_whole_groups():
    samples = synthetic_samples(num_groups=6, group_size=G)
    minis = M.mini_batches(samples, G, 4)  # 6 groups into 4: 1, 2, 1, 2
    assert [len(m) // G for m in minis] == [1, 2, 1, 2]
    assert [s for m in minis for s in m] == samples
    assert M.mini_batches(samples, G, 1) == [samples]
    assert M.mini_batches(samples[:G], G, 2) == [[], samples[:G]]  # a rank with fewer groups than steps


def test_each_mini_batch_is_normalised_on_its_own():
    """Token mean per mini-batch: each step's weights add up to 1 over its tokens, a whole batch's size
    (verl's loss of each mini-batch)."""
    for mini in _mini_batches(2):
        assert sum(b.weights.sum().item() for b in mini) == pytest.approx(1.0)


def test_first_step_is_on_policy_and_the_second_is_clipped():
    torch.manual_seed(0)
    model = tiny_model()
    optimizer = _optimizer(model, lr=3e-2)  # large: the first step moves the policy past the clip range
    minis = _mini_batches(2)
    record_old_logprobs(model, [b for mini in minis for b in mini], LOSS, 1.0)
    first = policy_update(model, None, optimizer, minis[0], LOSS, 1.0, grad_clip=1.0)
    second = policy_update(model, None, optimizer, minis[1], LOSS, 1.0, grad_clip=1.0)
    # The first step's ratio is exactly 1: pi_old was recorded with the same weights.
    assert first.stats["approx_kl"] == 0.0 and first.stats["clip_fraction"] == 0.0
    assert second.stats["approx_kl"] > 1e-3 and second.stats["clip_fraction"] > 0.05


def test_policy_updates_take_every_step_and_average_their_metrics():
    torch.manual_seed(0)
    model = tiny_model()
    result = policy_updates(model, None, _optimizer(model, 3e-2), _mini_batches(2), LOSS, 1.0, 1.0, epochs=2)
    assert result.steps == 4 and not result.skipped
    assert result.stats["clip_fraction"] > 0.05 and result.stats["approx_kl"] > 1e-3
    tokens = sum(b.weights.ne(0).sum().item() for mini in _mini_batches(2) for b in mini)
    assert result.stats["kept_tokens"] == 2 * tokens  # two epochs over the same tokens


def test_a_tiny_learning_rate_leaves_nothing_clipped():
    """The clip fraction above comes from the first step's change of the policy, not from pi_old."""
    torch.manual_seed(0)
    model = tiny_model()
    result = policy_updates(model, None, _optimizer(model, 1e-9), _mini_batches(2), LOSS, 1.0, 1.0)
    assert result.steps == 2 and result.stats["clip_fraction"] == 0.0


def test_one_mini_batch_and_one_epoch_is_the_single_on_policy_step():
    """Defaults: no pi_old recorded (old_logprobs None) and the same result, bit for bit."""
    results, params = [], []
    for update in ("single", "schedule"):
        torch.manual_seed(0)
        model = tiny_model()
        optimizer = _optimizer(model, 3e-2)
        (batches,) = _mini_batches(1)
        if update == "single":
            results.append(policy_update(model, None, optimizer, batches, LOSS, 1.0, 1.0))
        else:
            results.append(policy_updates(model, None, optimizer, [batches], LOSS, 1.0, 1.0))
            assert all(b.old_logprobs is None for b in batches)
        params.append(_params(model))
    assert results[0] == results[1]
    assert torch.equal(params[0], params[1])


def test_a_non_finite_step_ends_the_update():
    torch.manual_seed(0)
    model = tiny_model()
    minis = _mini_batches(3)
    for batch in minis[1]:
        batch.advantages = torch.full_like(batch.advantages, float("nan"))
    before = _params(model)
    result = policy_updates(model, None, _optimizer(model, 1e-3), minis, LOSS, 1.0, 1.0)
    assert result.steps == 2 and result.nonfinite == "loss"  # the third mini-batch never ran
    after = _params(model)
    assert not torch.equal(before, after)  # the first step was taken; the guard decides what to undo
    assert all(p.grad is None for p in model.parameters())  # the skipped step dropped its gradients


def test_the_guard_rolls_back_every_step_of_the_update():
    """One snapshot before the first step: non-finite parameters after the second undo both steps."""
    torch.manual_seed(0)
    model = tiny_model()
    optimizer, scheduler = adamw(
        model.parameters(), lr=1e-3, weight_decay=0.0, warmup_steps=0, steps=10, schedule=LRSchedule.constant
    )
    guard = DivergenceGuard(model, optimizer, scheduler, max_bad_steps=3)
    before = _params(model)
    guard.before_update()
    taken, step = [], optimizer.step

    def step_then_poison(*args, **kwargs):
        step(*args, **kwargs)
        taken.append(_params(model))
        if len(taken) == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    optimizer.step = step_then_poison
    result = policy_updates(model, None, optimizer, _mini_batches(3), LOSS, 1.0, 1.0)
    assert result.steps == 2 and result.nonfinite == "updated parameters"
    assert not torch.equal(taken[0], before)  # the first step had changed the policy
    guard.after_update(1, optimizer_steps=2, proves=True)
    guard.bad_step(1, 1e-3, result.nonfinite, sampled_with=1)
    assert torch.equal(_params(model), before)


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("trainer", {"mini_batches": 0}, "trainer.mini_batches must be >= 1, got 0"),
        ("trainer", {"epochs": 0}, "trainer.epochs must be >= 1, got 0"),
        ("trainer", {"mini_batches": 3}, r"trainer.mini_batches must be a divisor of .*\(32\), got 3"),
        (
            "injection",
            {"clip_policy_tokens": False},
            "injection.clip_policy_tokens=false needs injection.shaping",
        ),
    ],
    ids=["mini_batches", "epochs", "not_a_divisor", "clip_without_shaping"],
)
def test_validation_names_the_key_and_the_value(section, values, message):
    cfg = TrainConfig()
    setattr(cfg, section, replace(getattr(cfg, section), **values))
    with pytest.raises(ValueError, match=message):
        validate(cfg)
