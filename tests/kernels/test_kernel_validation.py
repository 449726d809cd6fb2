"""Bad input raises ValueError naming what is wrong, on every backend, before any kernel runs."""

import dataclasses

import pytest
import torch
from kernel_inputs import BACKENDS, loss_inputs

from lrm_fast.kernels import Backend, checks, group_advantages, grpo_loss, token_logprobs
from lrm_fast.kernels.policy_terms import LossOptions


def _valid(n=4, vocab=10):
    return {
        "logits": torch.randn(n, vocab),
        "targets": torch.randint(0, vocab, (n,)),
        "old_logprobs": torch.randn(n),
        "advantages": torch.randn(n),
        "weights": torch.ones(n),
    }


BAD_LOSS_INPUTS = {
    "logits_1d": ({"logits": torch.randn(10)}, "logits must be a 2-D"),
    "logits_int": ({"logits": torch.ones(4, 10, dtype=torch.long)}, "logits must be a floating"),
    "logits_empty_vocab": ({"logits": torch.randn(4, 0)}, "empty vocabulary"),
    "targets_length": ({"targets": torch.zeros(3, dtype=torch.long)}, r"targets must have shape \[4\]"),
    "targets_float": ({"targets": torch.zeros(4)}, "targets must be an integer"),
    "target_too_large": (
        {"targets": torch.tensor([0, 1, 10, 2])},
        r"id 10, outside the vocabulary \[0, 10\)",
    ),
    "target_negative": ({"targets": torch.tensor([0, -1, 3, 2])}, r"id -1, outside"),
    "advantages_length": ({"advantages": torch.randn(5)}, r"advantages must have shape \[4\]"),
    "weights_2d": ({"weights": torch.ones(4, 1)}, r"weights must have shape \[4\]"),
    "old_logprobs_int": (
        {"old_logprobs": torch.zeros(4, dtype=torch.long)},
        "old_logprobs must be a floating",
    ),
    "advantages_on_meta": ({"advantages": torch.randn(4, device="meta")}, "advantages is on meta"),
}

BAD_LOSS_OPTIONS = {
    "temperature_zero": ({"temperature": 0.0}, "temperature must be > 0"),
    "clip_low_negative": ({"clip_low": -0.1}, "clip_low must be >= 0"),
    "clip_low_one": ({"clip_low": 1.0}, "clip_low must be < 1"),
    "dual_clip_below_one": ({"dual_clip": 0.9}, "dual_clip must be > 1"),
    "negative_weight_negative": ({"negative_weight": -1.0}, "negative_weight must be >= 0"),
    "kl_without_ref": ({"kl_coef": 0.1}, "ref_logprobs is required"),
    "ref_length": ({"ref_logprobs": torch.randn(3)}, r"ref_logprobs must have shape \[4\]"),
    "unknown_backend": ({"backend": "cuda"}, "backend must be one of"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("change", "message"), BAD_LOSS_INPUTS.values(), ids=BAD_LOSS_INPUTS.keys())
def test_grpo_loss_rejects_bad_input(backend, change, message):
    inputs = {**_valid(), **change}
    with pytest.raises(ValueError, match=message):
        grpo_loss(*inputs.values(), backend=backend)


@pytest.mark.parametrize(("change", "message"), BAD_LOSS_OPTIONS.values(), ids=BAD_LOSS_OPTIONS.keys())
def test_grpo_loss_rejects_bad_options(change, message):
    with pytest.raises(ValueError, match=message):
        grpo_loss(*_valid().values(), **change)


def test_triton_backend_refuses_float64_logits():
    with pytest.raises(ValueError, match="float64 is not supported by the triton backend"):
        grpo_loss(*{**_valid(), "logits": torch.randn(4, 10, dtype=torch.float64)}.values(), backend="triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_logprobs_rejects_bad_input(backend):
    with pytest.raises(ValueError, match=r"targets must have shape \[4\]"):
        token_logprobs(torch.randn(4, 10), torch.zeros(5, dtype=torch.long), backend=backend)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        token_logprobs(torch.randn(4, 10), torch.full((4,), 10), backend=backend)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_logprobs(
            torch.randn(4, 10), torch.zeros(4, dtype=torch.long), temperature=-1.0, backend=backend
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("rewards", "options", "message"),
    [
        (torch.ones(2, 4), {"group_size": 4}, "rewards must be a 1-D"),
        (torch.ones(10), {"group_size": 4}, "not a multiple of group_size=4"),
        (torch.ones(8), {"group_size": 0}, "group_size must be a positive integer"),
        (torch.ones(8), {"group_size": 4, "scale": "mad"}, "scale must be 'std' or 'none'"),
        (torch.ones(8), {"group_size": 4, "eps": -1.0}, "eps must be >= 0"),
        (torch.ones(8), {"group_size": 4, "baseline": "median"}, "baseline must be one of"),
    ],
    ids=["2d", "not_multiple", "group_size_zero", "unknown_scale", "negative_eps", "unknown_baseline"],
)
def test_group_advantages_rejects_bad_input(backend, rewards, options, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(rewards, backend=backend, **options)


# grpo_loss's defaults: LossOptions has none of its own.
VALID_OPTIONS = dict(
    temperature=1.0,
    objective="clipped",
    ratio_level="token",
    clip_low=0.2,
    clip_high=0.2,
    dual_clip=None,
    positive_weight=1.0,
    negative_weight=1.0,
    kl_coef=0.0,
    entropy_coef=0.0,
)

BAD_OPTION_VALUES = {
    "temperature_zero": ("temperature", 0.0, r"temperature must be > 0, got 0\.0"),
    "temperature_nan": ("temperature", float("nan"), "temperature must be > 0"),
    "clip_low_negative": ("clip_low", -0.1, r"clip_low must be >= 0, got -0\.1"),
    "clip_low_one": ("clip_low", 1.0, "clip_low must be < 1"),
    "clip_high_negative": ("clip_high", -0.2, "clip_high must be >= 0"),
    "clip_high_nan": ("clip_high", float("nan"), "clip_high must be >= 0"),
    "dual_clip_one": ("dual_clip", 1.0, "dual_clip must be > 1"),
    "positive_weight_negative": ("positive_weight", -0.5, "positive_weight must be >= 0"),
    "negative_weight_nan": ("negative_weight", float("nan"), "negative_weight must be >= 0"),
    "kl_coef_negative": ("kl_coef", -0.01, "kl_coef must be >= 0"),
    "objective_unknown": ("objective", "gspo_token", "objective must be one of"),
    "ratio_level_unknown": ("ratio_level", "group", "ratio_level must be one of"),
}


@pytest.mark.parametrize(
    ("name", "value", "message"), BAD_OPTION_VALUES.values(), ids=BAD_OPTION_VALUES.keys()
)
def test_loss_options_reject_bad_values_naming_the_option(name, value, message):
    with pytest.raises(ValueError, match=message):
        LossOptions(**{**VALID_OPTIONS, name: value})


def test_loss_options_hold_plain_floats_and_are_frozen():
    options = LossOptions(**{**VALID_OPTIONS, "temperature": 1, "dual_clip": torch.tensor(2.5), "kl_coef": 0})
    assert type(options.temperature) is float and options.temperature == 1.0
    assert type(options.dual_clip) is float and options.dual_clip == 2.5
    assert type(options.kl_coef) is float
    assert LossOptions(**VALID_OPTIONS).dual_clip is None  # None (off) stays None
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.clip_low = 0.3
    with pytest.raises(TypeError):  # every option named: the public signatures hold the only defaults
        LossOptions(temperature=1.0)


def test_backend_accepts_members_and_strings():
    cpu = torch.zeros(1)
    for given in ("auto", Backend.auto, "torch", Backend.torch):
        assert checks.resolve_backend(given, cpu) is Backend.torch
    assert checks.resolve_backend("triton", cpu) is Backend.triton
    assert Backend.triton == "triton" and tuple(member.value for member in Backend) == checks.BACKENDS
    with pytest.raises(ValueError, match="backend must be one of"):
        checks.resolve_backend("cuda", cpu)


@pytest.mark.parametrize("backend", BACKENDS)
def test_public_ops_take_backend_members(backend):
    logits, targets, old, advantages, weights, _ = loss_inputs(6, 40, seed=13)
    by_name, _ = grpo_loss(logits, targets, old, advantages, weights, backend=backend)
    by_member, _ = grpo_loss(logits, targets, old, advantages, weights, backend=Backend(backend))
    assert torch.equal(by_member, by_name)
    logp = token_logprobs(logits, targets, backend=Backend(backend))
    assert torch.equal(logp, token_logprobs(logits, targets, backend=backend))
