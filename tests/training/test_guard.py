"""The divergence guard (lrm_fast/training/guard.py) and the update's non-finite checks: each path that
detects a non-finite quantity, the rollback to the state before the update, and the count that stops."""

import pytest
import torch
from trainer_fixtures import synthetic_samples, tiny_model

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import LossConfig
from lrm_fast.config.choices import LRSchedule
from lrm_fast.data.tokenizer import build_tokenizer
from lrm_fast.model.optim import adamw
from lrm_fast.rollout import NonFiniteError, SamplingParams
from lrm_fast.rollout.hf import HFRolloutBackend
from lrm_fast.training.guard import Diverged, DivergenceGuard, StateSnapshot
from lrm_fast.training.update import policy_update

pytestmark = pytest.mark.usefixtures("one_thread")

LOSS = LossConfig(backend="torch")


def _batches():
    samples = synthetic_samples(num_groups=4, group_size=4)
    B.assign_advantages(samples, 4, "std")
    B.assign_weights(samples, "token_mean", B.local_normalisers(samples), sum_norm_length=10)
    return [M.collate(mb, False) for mb in M.micro_batches(samples, 60, False)]


def _parts(lr: float = 1e-3):
    model = tiny_model()
    optimizer, scheduler = adamw(
        model.parameters(), lr=lr, weight_decay=0.01, warmup_steps=2, steps=10, schedule=LRSchedule.cosine
    )
    return model, optimizer, scheduler


def _update(model, optimizer, scheduler, batches):
    result = policy_update(model, None, optimizer, batches, LOSS, temperature=1.0, grad_clip=1.0)
    if not result.skipped:
        scheduler.step()
    return result


def _state(model, optimizer, scheduler):
    params = _flat(model)
    adam = [_copied(optimizer.state[p]) for p in model.parameters() if p in optimizer.state]
    return params, adam, scheduler.state_dict()


def _copied(state: dict) -> dict:
    return {key: value.clone() if torch.is_tensor(value) else value for key, value in state.items()}


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _assert_same_state(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert len(a[1]) == len(b[1])
    for x, y in zip(a[1], b[1], strict=True):
        assert x.keys() == y.keys()
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)
    assert a[2] == b[2]


@pytest.mark.parametrize("updates_before", [0, 1], ids=["fresh_optimizer", "after_an_update"])
def test_snapshot_restores_parameters_optimizer_state_and_schedule(updates_before):
    parts, batches = _parts(), _batches()
    for _ in range(updates_before):
        _update(*parts, batches)
    before = _state(*parts)
    snapshot = StateSnapshot(*parts)
    _update(*parts, batches)
    _update(*parts, batches)
    assert not torch.equal(_flat(parts[0]), before[0])
    snapshot.restore(*parts)
    if updates_before:
        _assert_same_state(_state(*parts), before)
    else:  # AdamW's lazily created state, as it starts: zeros, step 0
        restored = _state(*parts)
        torch.testing.assert_close(restored[0], before[0], rtol=0, atol=0)
        assert restored[2] == before[2]
        assert all(not value.any() for state in restored[1] for value in state.values())
    # The restored run goes on exactly as one that never took the two updates.
    twin = _parts()
    for _ in range(updates_before):
        _update(*twin, batches)
    _update(*parts, batches)
    _update(*twin, batches)
    _assert_same_state(_state(*parts), _state(*twin))


def _poison_gradient(model):
    """An infinite gradient on one weight, from a hook on the backward."""
    weight = next(model.parameters())
    return weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))


@pytest.mark.parametrize(
    ("poison", "quantity"),
    [("loss", "loss"), ("gradient", "gradient norm"), ("lr", "updated parameters")],
)
def test_update_names_the_first_non_finite_quantity(poison, quantity):
    model, optimizer, _ = _parts(lr=float("inf") if poison == "lr" else 1e-3)
    batches = _batches()
    if poison == "loss":  # a NaN advantage reaches the loss
        batches[0].advantages[0] = float("nan")
    if poison == "gradient":
        _poison_gradient(model)
    before = _flat(model)
    result = policy_update(model, None, optimizer, batches, LOSS, temperature=1.0, grad_clip=1.0)
    assert result.nonfinite == quantity and result.skipped
    if poison == "lr":  # taken, and the parameters it made are what the guard rolls back
        assert not torch.isfinite(_flat(model)).all()
    else:  # skipped: nothing moved and no gradient is left behind
        assert torch.equal(_flat(model), before)
        assert all(p.grad is None for p in model.parameters())
        assert not optimizer.state


def test_a_finite_update_is_not_flagged():
    model, optimizer, _ = _parts()
    result = policy_update(model, None, optimizer, _batches(), LOSS, temperature=1.0, grad_clip=1.0)
    assert result.nonfinite is None and result.grad_norm > 0


def test_guard_rolls_back_counts_and_stops():
    parts, batches = _parts(), _batches()
    guard = DivergenceGuard(*parts, max_bad_steps=3)
    _update(*parts, batches)
    good = _state(*parts)
    guard.snapshot()
    _update(*parts, batches)
    guard.applied()
    # The next rollout overflowed: the update that made its weights is undone.
    line = guard.bad_step(step=2, lr=1e-3, quantity="sampled logits", roll_back=True)
    assert line == "step 2: non-finite sampled logits at lr 0.001, the last update rolled back"
    _assert_same_state(_state(*parts), good)
    # Nothing left to roll back: a second bad step only counts.
    assert guard.bad_step(3, 1e-3, "loss", roll_back=True).endswith("no update taken")
    stop = r"step 4: non-finite gradient norm at lr 0.001, .*3 bad steps in a row"
    with pytest.raises(Diverged, match=stop):
        guard.bad_step(4, 1e-3, "gradient norm", roll_back=False)


def test_only_a_finite_rollout_after_an_update_confirms_it():
    guard = DivergenceGuard(*_parts(), max_bad_steps=2)
    guard.bad_step(1, 1.0, "loss", roll_back=False)
    guard.rollout_ok()  # no update since the bad step: nothing confirmed, the count stays
    with pytest.raises(Diverged):
        guard.bad_step(2, 1.0, "loss", roll_back=False)
    guard = DivergenceGuard(*_parts(), max_bad_steps=2)
    guard.bad_step(1, 1.0, "loss", roll_back=False)
    guard.applied()
    guard.rollout_ok()  # an update, then a finite rollout with it: the count starts again
    guard.bad_step(2, 1.0, "loss", roll_back=False)
    assert guard.bad_in_a_row == 1


def test_sampling_from_non_finite_logits_raises():
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight[5].fill_(float("inf"))  # one token's logit overflows
    backend = HFRolloutBackend(model, build_tokenizer(), eos_token_ids=[1])
    with pytest.raises(NonFiniteError, match="non-finite logits"):
        backend.generate([[7, 8, 9]], group_size=2, params=SamplingParams(max_new_tokens=4, seed=0))
    with pytest.raises(NonFiniteError, match="non-finite logits"):
        backend.greedy([[7, 8, 9]], max_new_tokens=4)
