"""Checkpoints change nothing in the run that writes them: an optimizer that no step has touched yet (every
update so far without gradient: all groups zero-variance) stays fresh through a save and a load, although
torch.distributed.checkpoint creates its state by a step with lr 0."""

import torch
from trainer_fixtures import tiny_model

from lrm_fast.config.choices import LRSchedule
from lrm_fast.model.optim import adamw
from lrm_fast.training.checkpoint import load_checkpoint, save_checkpoint


def _parts():
    model = tiny_model()
    optimizer, _ = adamw(
        model.parameters(), lr=1e-3, weight_decay=0.01, warmup_steps=0, steps=10, schedule=LRSchedule.constant
    )
    return model, optimizer


def _step(model, optimizer) -> None:
    optimizer.zero_grad()
    model(input_ids=torch.tensor([[3, 4, 5]]), use_cache=False).logits.square().mean().backward()
    optimizer.step()


def test_a_fresh_optimizer_stays_fresh_through_a_checkpoint(tmp_path):
    model, optimizer = _parts()
    save_checkpoint(tmp_path, 1, model, optimizer, {}, keep=2)
    assert not optimizer.state  # AdamW's step count would start at 1, not 0
    _step(model, optimizer)
    twin_model, twin_optimizer = _parts()
    _step(twin_model, twin_optimizer)
    for a, b in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(a, b)
    resumed_model, resumed_optimizer = _parts()
    load_checkpoint(tmp_path / "checkpoints" / "step_000001", resumed_model, resumed_optimizer)
    assert not resumed_optimizer.state


def test_a_touched_optimizer_is_saved_and_loaded_whole(tmp_path):
    model, optimizer = _parts()
    _step(model, optimizer)
    save_checkpoint(tmp_path, 1, model, optimizer, {}, keep=2)
    resumed_model, resumed_optimizer = _parts()
    load_checkpoint(tmp_path / "checkpoints" / "step_000001", resumed_model, resumed_optimizer)
    for p, q in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(p, q)
        assert optimizer.state[p]["step"] == resumed_optimizer.state[q]["step"] == 1
        assert torch.equal(optimizer.state[p]["exp_avg"], resumed_optimizer.state[q]["exp_avg"])
