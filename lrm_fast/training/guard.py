"""The divergence guard: a step that turns anything non-finite is rolled back, counted, and, when such
steps keep coming, the run stops with a message and a checkpoint it can resume from.

What is checked: the sampled logits (lrm_fast/rollout/hf.py) or the sampled tokens' log-probs vLLM returns
(lrm_fast/rollout/vllm.py), the loss, the gradient norm, and the parameters after the optimizer step
(lrm_fast/training/update.py). A non-finite loss or gradient norm skips
the optimizer step; non-finite parameters after it, or non-finite logits when sampling with them, roll
back the update that made those weights: the parameters, the optimizer state and the learning-rate
schedule return to their values before it. A large but finite update can pass every check and still make
the next rollout's logits overflow: that update counts as bad too, so an update is confirmed only by a
finite batch sampled with its weights or with weights descended from them.

Versions. The weights after step v are version v (0: the start, or the checkpoint a run resumed from);
every batch records the version that sampled it. With asynchronous rollouts that is an older version than
the current one (lrm_fast/training/async_rollout.py): batch n is sampled with version n - 1 - lag. So the
guard keeps one snapshot per update not yet confirmed, each taken before its update, and a bad batch
sampled with version v rolls back the newest update inside v's weights (with every update after it): the
state before that update is the last one no bad batch came from. Rolling back only the last update would
restore the weights that sampled the bad batch whenever lag > 0.

The run stops after `trainer.max_bad_steps` bad steps with no update confirmed between them (an update
applied after the last bad step, and with gradient: one of all zero-variance groups proves nothing),
naming the step, the learning rate and the first non-finite quantity.

Cost: one host copy of this rank's parameters and optimizer state per update not yet confirmed (for
FSDP2, its shards): one in the synchronous loop, lag + 1 with asynchronous rollouts. Snapshots do not
survive a checkpoint: after a resume, nothing before it can be rolled back.
"""

from dataclasses import dataclass

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


@dataclass
class _Update:
    before: StateSnapshot  # the state the update started from
    proves: bool  # it had gradient: its confirmation resets the count of bad steps


class DivergenceGuard:
    """The lineage of the policy's versions, a snapshot before every unconfirmed update, the bad-step count,
    and the optimizer steps behind the current weights (asynchronous rollouts count staleness by them)."""

    def __init__(self, model, optimizer, scheduler, max_bad_steps: int):
        self.parts = (model, optimizer, scheduler)
        self.max_bad_steps = max_bad_steps
        self.updates: dict[int, _Update] = {}  # unconfirmed updates, by the step that applied them
        # version -> the step of the newest update inside its weights (absent: none this guard can undo)
        self.origin: dict[int, int] = {}
        self.optimizer_steps = 0  # behind the current weights, rollbacks undone (a resume sets it)
        self._steps_before: dict[int, int] = {}  # optimizer_steps before each unconfirmed update
        self._pending: StateSnapshot | None = None
        self.bad_in_a_row = 0
        self.last_bad_step = 0

    def before_update(self) -> None:
        """Called before each rollout batch's update: the state it starts from."""
        self._pending = StateSnapshot(*self.parts)

    def after_update(self, step: int, optimizer_steps: int, proves: bool) -> None:
        """The update of `step` took `optimizer_steps` optimizer steps (0: none, the weights are
        unchanged); the weights are now version `step`."""
        if optimizer_steps:
            self.updates[step] = _Update(self._pending, proves)
            self._steps_before[step] = self.optimizer_steps
            self.optimizer_steps += optimizer_steps
            self.origin[step] = step
        elif step - 1 in self.origin:
            self.origin[step] = self.origin[step - 1]
        self._pending = None

    def confirm(self, version: int) -> None:
        """A finite batch sampled with `version` confirms every update inside its weights."""
        newest = self.origin.get(version)
        if newest is None:
            return
        confirmed = [step for step in self.updates if step <= newest]
        if any(self.updates[step].proves and step > self.last_bad_step for step in confirmed):
            self.bad_in_a_row = 0
        for step in confirmed:
            del self.updates[step], self._steps_before[step]
        # Batches come in order, so no later one was sampled with weights older than these: the versions
        # before the newest update inside them are never looked up again.
        for old in [v for v in self.origin if v < newest]:
            del self.origin[old]

    def holds_newer_update(self, version: int, than: int) -> bool:
        """Whether the weights of `version` hold an unconfirmed update that those of `than` lack: then a
        non-finite loss of a batch sampled finitely with `than`, computed with `version`, points at it."""
        newest = self.origin.get(version)
        return newest in self.updates and newest != self.origin.get(than)

    def bad_step(self, step: int, lr: float, quantity: str, sampled_with: int | None) -> tuple[str, bool]:
        """Count a bad step of `step`; with `sampled_with` (the version whose weights gave the non-finite
        quantity) roll back the newest update inside them, if it is not confirmed. The weights are then
        version `step`. Returns the line to log and whether anything was rolled back; raises Diverged once
        `max_bad_steps` have come with no confirmed update between them."""
        newest = self.origin.get(sampled_with) if sampled_with is not None else None
        rolled = newest in self.updates
        if rolled:
            self.updates[newest].before.restore(*self.parts)
            self.optimizer_steps = self._steps_before[newest]
            for undone in [s for s in self.updates if s >= newest]:
                del self.updates[undone], self._steps_before[undone]
            self.origin.pop(step, None)
            if newest - 1 in self.origin:  # the restored weights are version newest - 1's
                self.origin[step] = self.origin[newest - 1]
        elif step - 1 in self.origin and step not in self.origin:
            self.origin[step] = self.origin[step - 1]
        self.bad_in_a_row += 1
        self.last_bad_step = step
        action = f"the update of step {newest} rolled back" if rolled else "no update taken"
        message = f"step {step}: non-finite {quantity} at lr {lr:.3g}, {action}"
        if self.bad_in_a_row >= self.max_bad_steps:
            raise Diverged(
                f"{message}; {self.bad_in_a_row} bad steps in a row (trainer.max_bad_steps="
                f"{self.max_bad_steps}): the run diverged. Its checkpoint of this step holds the last good "
                "state; a new run with a smaller trainer.lr is the usual remedy"
            )
        return message, rolled
