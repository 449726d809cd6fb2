"""group_advantages benchmarks: GRPO's group-relative advantages of S sequences in groups of G.

    pytest benchmarks/bench_group_advantages.py --benchmark-only -k cpu

Advantages carry no gradient, so there is only a forward mode. Floor: the S rewards read once, the S fp32
advantages and S bool zero-variance flags written once. At real batch sizes this op is tiny next to the
loss; the benchmark keeps its launch and torch overheads in view.
"""

import functools
from dataclasses import dataclass

import pytest
import torch

from lrm_fast.kernels import group_advantages, reference

from .cases import case_marks, compiled_reference, measure, synchronize


@dataclass(frozen=True)
class RewardsPreset:
    name: str
    sequences: int  # S = prompts x group size
    group_size: int
    device: str
    rounds: int


PRESETS = (
    # 512 prompts x 16 responses, the study's scale of a step; 0/1 verifier rewards.
    RewardsPreset("cpu-s8192-g16", 8192, 16, "cpu", rounds=20),
    RewardsPreset("s65536-g16", 65536, 16, "cuda", rounds=50),
)
PROVIDERS = ("triton", "torch", "naive", "compiled")


def _op(provider: str, group_size: int):
    if provider in ("triton", "torch"):
        return functools.partial(group_advantages, group_size=group_size, backend=provider)
    if provider == "naive":
        return functools.partial(reference.group_advantages, group_size=group_size)
    if provider == "compiled":
        compiled = compiled_reference("group_advantages", dynamic_dim0=False)
        return functools.partial(compiled, group_size=group_size)
    raise ValueError(f"no group_advantages provider {provider!r}")


CASES = [
    pytest.param(preset, provider, id=f"{preset.name}-{provider}-forward", marks=case_marks(preset, provider))
    for preset in PRESETS
    for provider in PROVIDERS
]


@pytest.mark.parametrize(("preset", "provider"), CASES)
def test_group_advantages(benchmark, results, preset, provider):
    g = torch.Generator(device=preset.device).manual_seed(0)
    rewards = torch.randint(0, 2, (preset.sequences,), generator=g, device=preset.device).float()
    op = _op(provider, preset.group_size)
    device = torch.device(preset.device)
    kept = []

    def setup():
        kept.clear()
        return (), {}

    def target():
        kept.append(op(rewards))
        synchronize(device)

    floor_bytes = preset.sequences * (rewards.element_size() + 4 + 1)
    measure(
        benchmark, results, op="group_advantages", preset=preset, provider=provider, mode="forward",
        setup=setup, target=target, floor_bytes=floor_bytes,
    )  # fmt: skip
