"""The divergence guard: a step that turns anything non-finite is rolled back, counted, and, when such
steps keep coming, the run stops with a message and a checkpoint it can resume from.

What is checked: the sampled logits (the rollout of the next step, lrm_fast/rollout/hf.py), the loss,
the gradient norm, and the parameters after the optimizer step (lrm_fast/training/update.py). A
non-finite loss or gradient norm skips the optimizer step; non-finite parameters after it, or non-finite
logits when sampling with them, roll back the last applied update: the parameters, the optimizer state
and the learning-rate schedule return to their values before it (a copy kept on the host before every
update). A large but finite update can pass every check and still make the next rollout's logits
overflow: that update counts as bad too, so an update is confirmed only by the finite rollout after it.

The run stops after `trainer.max_bad_steps` bad steps with no confirmed update between them, naming the
step, the learning rate and the first non-finite quantity.

Cost: one host copy of this rank's parameters and optimizer state per step (for FSDP2, its shards).
"""

import torch


class Diverged(RuntimeError):
    """Too many bad steps in a row; the message names the step, the lr and the quantity."""


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class StateSnapshot:
    """This rank's parameters, optimizer state and schedule, copied to the host; restored in place."""

    def __init__(self, model, optimizer, scheduler):
        params = list(model.parameters())
        self.params = [_local(p.detach()).to("cpu", copy=True) for p in params]
        self.optimizer_state = [
            {key: _copy(value) for key, value in optimizer.state[p].items()} if p in optimizer.state else None
            for p in params
        ]
        self.scheduler_state = scheduler.state_dict()
        # The schedule writes each group's lr when it steps; loading its state does not write it back.
        self.group_lrs = [group["lr"] for group in optimizer.param_groups]

    @torch.no_grad()
    def restore(self, model, optimizer, scheduler) -> None:
        for p, saved, state in zip(model.parameters(), self.params, self.optimizer_state, strict=True):
            _local(p).copy_(saved)
            if state is None:  # no update had touched it yet: AdamW's fresh state is all zeros (step 0
                # included), kept rather than dropped so that a checkpoint still holds every key
                for value in optimizer.state.get(p, {}).values():
                    if torch.is_tensor(value):
                        _local(value).zero_()
                continue
            for key, value in state.items():
                if torch.is_tensor(value):
                    _local(optimizer.state[p][key]).copy_(value)
                else:
                    optimizer.state[p][key] = value
        scheduler.load_state_dict(self.scheduler_state)
        for group, lr in zip(optimizer.param_groups, self.group_lrs, strict=True):
            group["lr"] = lr


def _copy(value):
    return _local(value.detach()).to("cpu", copy=True) if torch.is_tensor(value) else value


class DivergenceGuard:
    """Keeps the state before the last applied update and counts bad steps since the last confirmed one."""

    def __init__(self, model, optimizer, scheduler, max_bad_steps: int):
        self.parts = (model, optimizer, scheduler)
        self.max_bad_steps = max_bad_steps
        self.before_update: StateSnapshot | None = None  # the state the last applied update started from
        self.unconfirmed = False  # an update was applied and no rollout has used it yet
        self.bad_in_a_row = 0

    def rollout_ok(self) -> None:
        """A finite rollout with the current weights confirms the update that made them."""
        if self.unconfirmed:
            self.unconfirmed, self.bad_in_a_row = False, 0

    def snapshot(self) -> None:
        """Called before each optimizer step."""
        self.before_update = StateSnapshot(*self.parts)

    def applied(self) -> None:
        self.unconfirmed = True

    def bad_step(self, step: int, lr: float, quantity: str, roll_back: bool) -> str:
        """Count a bad step (rolling back the last applied update if asked); the line to log. Raises
        Diverged once `max_bad_steps` have come with no confirmed update between them."""
        rolled = roll_back and self.before_update is not None
        if rolled:
            self.before_update.restore(*self.parts)
            self.before_update, self.unconfirmed = None, False
        self.bad_in_a_row += 1
        action = "the last update rolled back" if rolled else "no update taken"
        message = f"step {step}: non-finite {quantity} at lr {lr:.3g}, {action}"
        if self.bad_in_a_row >= self.max_bad_steps:
            raise Diverged(
                f"{message}; {self.bad_in_a_row} bad steps in a row (trainer.max_bad_steps="
                f"{self.max_bad_steps}): the run diverged. Its checkpoint of this step holds the last good "
                "state; a new run with a smaller trainer.lr is the usual remedy"
            )
        return message
