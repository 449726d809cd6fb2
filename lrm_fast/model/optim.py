"""AdamW with linear warmup, then a constant or cosine learning rate: the SFT cold start's and GRPO's."""

import math
from collections.abc import Callable, Iterable

import torch

from lrm_fast.config.choices import LRSchedule


def lr_multiplier(warmup_steps: int, steps: int, schedule: LRSchedule) -> Callable[[int], float]:
    """The LambdaLR factor: linear warmup to 1, then constant, or cosine down to 0 at `steps`."""
    if schedule not in list(LRSchedule):
        raise ValueError(f"schedule must be one of {[s.value for s in LRSchedule]}, got {schedule!r}")

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == LRSchedule.constant:
            return 1.0
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return multiplier


def adamw(
    parameters: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    steps: int,
    schedule: LRSchedule,
    betas: tuple[float, float] = (0.9, 0.999),
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """(optimizer, scheduler): AdamW (decoupled weight decay) under `lr_multiplier`'s schedule."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(warmup_steps, steps, schedule)
    )
