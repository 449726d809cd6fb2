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
    guard.before_update()
    _update(*parts, batches)
    guard.after_update(step=1, optimizer_steps=1, proves=True)
    # The next rollout (sampled with version 1, the weights after step 1) overflowed: update 1 is undone.
    line, rolled = guard.bad_step(step=2, lr=1e-3, quantity="sampled logits", sampled_with=1)
    assert rolled
    assert line == "step 2: non-finite sampled logits at lr 0.001, the update of step 1 rolled back"
    _assert_same_state(_state(*parts), good)
    assert guard.optimizer_steps == 0
    # Nothing left to roll back: a second bad step only counts.
    line, rolled = guard.bad_step(3, 1e-3, "loss", sampled_with=2)
    assert not rolled and line.endswith("no update taken")
    stop = r"step 4: non-finite gradient norm at lr 0.001, .*3 bad steps in a row"
    with pytest.raises(Diverged, match=stop):
        guard.bad_step(4, 1e-3, "gradient norm", sampled_with=None)


def test_only_a_finite_batch_sampled_after_an_update_confirms_it():
    guard = DivergenceGuard(*_parts(), max_bad_steps=2)
    guard.bad_step(1, 1.0, "loss", sampled_with=None)
    guard.confirm(1)  # no update since the bad step: nothing confirmed, the count stays
    with pytest.raises(Diverged):
        guard.bad_step(2, 1.0, "loss", sampled_with=None)
    guard = DivergenceGuard(*_parts(), max_bad_steps=2)
    guard.bad_step(1, 1.0, "loss", sampled_with=None)
    guard.before_update()
    guard.after_update(2, optimizer_steps=1, proves=True)
    guard.confirm(1)  # a batch sampled before the update says nothing about it
    assert guard.bad_in_a_row == 1 and 2 in guard.updates
    guard.confirm(2)  # an update, then a finite batch sampled with it: the count starts again
    assert guard.bad_in_a_row == 0 and not guard.updates


def _versions(parts, batches, guard, steps):
    """`steps` updates, each its own version; returns the state of every version (0: the start)."""
    states = [_state(*parts)]
    for step in range(1, steps + 1):
        guard.before_update()
        _update(*parts, batches)
        guard.after_update(step, optimizer_steps=2, proves=True)
        states.append(_state(*parts))
    return states


@pytest.mark.parametrize("lag", [0, 1, 2])
def test_a_bad_batch_undoes_the_update_that_made_the_weights_that_sampled_it(lag):
    """Batch n is sampled with version n - 1 - lag; when it overflows, the state before the update that
    made that version comes back, whatever updates came after it."""
    parts, batches = _parts(), _batches()
    guard = DivergenceGuard(*parts, max_bad_steps=3)
    step = 4 + lag  # updates 1 .. step - 1 applied, none confirmed
    states = _versions(parts, batches, guard, step - 1)
    sampled_with = step - 1 - lag
    line, rolled = guard.bad_step(step, 1e-3, "sampled logits", sampled_with=sampled_with)
    assert rolled and f"update of step {sampled_with} rolled back" in line
    _assert_same_state(_state(*parts), states[sampled_with - 1])
    assert guard.optimizer_steps == 2 * (sampled_with - 1)
    assert sorted(guard.updates) == list(range(1, sampled_with))  # later updates are gone with it
    # The restored weights are now version `step`; a bad batch from them undoes the update before.
    _, rolled = guard.bad_step(step + 1, 1e-3, "sampled logits", sampled_with=step)
    assert rolled
    _assert_same_state(_state(*parts), states[sampled_with - 2])


def test_a_confirmed_update_is_never_undone():
    parts, batches = _parts(), _batches()
    guard = DivergenceGuard(*parts, max_bad_steps=3)
    states = _versions(parts, batches, guard, 3)
    guard.confirm(2)  # a finite batch sampled with version 2 confirms updates 1 and 2
    assert sorted(guard.updates) == [3]
    _, rolled = guard.bad_step(4, 1e-3, "sampled logits", sampled_with=2)
    assert not rolled
    _assert_same_state(_state(*parts), states[3])
    _, rolled = guard.bad_step(5, 1e-3, "sampled logits", sampled_with=3)
    assert rolled
    _assert_same_state(_state(*parts), states[2])


def test_sampling_from_non_finite_logits_raises():
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight[5].fill_(float("inf"))  # one token's logit overflows
    backend = HFRolloutBackend(model, build_tokenizer(), eos_token_ids=[1])
    with pytest.raises(NonFiniteError, match="non-finite logits"):
        backend.generate([[7, 8, 9]], group_size=2, params=SamplingParams(max_new_tokens=4, seed=0))
    with pytest.raises(NonFiniteError, match="non-finite logits"):
        backend.greedy([[7, 8, 9]], max_new_tokens=4)
