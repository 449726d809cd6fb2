"""Rollout correction: weighting each token by the trainer / sampler probability ratio.

Tokens sampled by another engine than the trainer (vLLM's numerics), or by older weights (asynchronous
rollouts), come from the sampler's policy mu, not from the trainer's pi_old. The ratio

    token     r_t = pi_old(t) / mu(t)
    sequence  r_i = exp(mean_{t in i} (log pi_old(t) - log mu(t)))   the geometric mean of i's token ratios,
                                                                      given to every token of sequence i

weighs each token's loss, so that the gradient is the trainer's policy's. How (rollout.correction_mode):

    truncate  min(r, tis_cap)                    truncated importance sampling (Yao et al. 2025; verl's
                                                 rollout_is): the cap bounds the variance
    mask      r inside [correction_low, tis_cap], 0 outside
                                                 masked importance sampling (IcePop; verl's rollout_rs):
                                                 tokens (or whole sequences) too far off are dropped

pi_old is the current policy with one optimizer step per rollout batch, else the recorded one. Tokens
without a sampler log-prob (NaN: injected solutions) keep factor 1 and stay out of every sum, and of
their sequence's mean. A sequence is a run of consecutive tokens with the same `sequence` index; its
mean is one O(N) segment sum (index_add), whatever the layout.
"""

import math
from dataclasses import dataclass

import torch

from lrm_fast.config import RolloutConfig
from lrm_fast.config.choices import CorrectionLevel, CorrectionMode

# Sums over known tokens, added up over micro-batches and ranks, then divided by the last one: the mean
# |log pi_old - log mu|, the mean token ratio, and the shares of tokens the cap truncated and the mask
# dropped (at the sequence level, the tokens of the sequences it acted on).
MISMATCH_SUMS = ("logp_abs_diff", "prob_ratio", "tis_truncated", "tis_masked", "tokens")


@dataclass(frozen=True)
class SamplerCorrection:
    """rollout.tis_cap and rollout.correction_*: how the ratio weighs the tokens (module docstring)."""

    cap: float | None = None  # the upper bound; None: no cap (truncate: measured, not applied)
    level: str = "token"  # token | sequence
    mode: str = "truncate"  # truncate | mask
    low: float | None = None  # mask: the lower bound (None: none)

    @classmethod
    def of(cls, rollout: RolloutConfig, asynchronous: bool) -> "SamplerCorrection":
        """The run's correction. Asynchronous rollouts always weight stale tokens by pi_prox / mu (decoupled
        PPO), so there a null tis_cap means no cap rather than no weight."""
        cap = math.inf if rollout.tis_cap is None and asynchronous else rollout.tis_cap
        level = CorrectionLevel(rollout.correction_level).value
        mode = CorrectionMode(rollout.correction_mode).value
        return cls(cap=cap, level=level, mode=mode, low=rollout.correction_low)

    @property
    def applied(self) -> bool:
        return self.cap is not None or (self.mode == "mask" and self.low is not None)


MEASURED_ONLY = SamplerCorrection()  # the ratio is measured, the weights are unchanged


def sampler_correction(
    trainer_logp: torch.Tensor,
    sampler_logp: torch.Tensor,
    correction: SamplerCorrection = MEASURED_ONLY,
    sequence: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(factor [N], sums [len(MISMATCH_SUMS)]) of N tokens; `sequence` [N] is each token's sequence index
    (needed at the sequence level)."""
    known = ~torch.isnan(sampler_logp)
    delta = torch.where(known, trainer_logp.float() - sampler_logp, 0.0)
    token_ratio = delta.exp()
    ratio = token_ratio if correction.level == "token" else _sequence_ratio(delta, known, sequence)
    cap = torch.inf if correction.cap is None else correction.cap
    truncated = masked = torch.zeros_like(known)
    if not correction.applied:
        factor = torch.ones_like(ratio)
    elif correction.mode == "truncate":
        factor = ratio.clamp(max=cap)
        truncated = known & (ratio > cap)
    else:
        low = 0.0 if correction.low is None else correction.low
        masked = known & ((ratio > cap) | (ratio < low))
        factor = torch.where(masked, 0.0, ratio)
    factor = torch.where(known, factor, 1.0)
    sums = torch.stack(
        [delta.abs().sum(), token_ratio[known].sum(), truncated.sum(), masked.sum(), known.sum()]
    )
    return factor, sums.double().cpu()


def _sequence_ratio(delta: torch.Tensor, known: torch.Tensor, sequence: torch.Tensor | None) -> torch.Tensor:
    """Each token's sequence's geometric-mean ratio over its known tokens (1 for a sequence of none)."""
    if sequence is None:
        raise ValueError("the sequence-level correction needs each token's sequence index")
    count = int(sequence.max()) + 1 if len(sequence) else 0
    sums = delta.new_zeros(count).index_add_(0, sequence, delta)
    tokens = delta.new_zeros(count).index_add_(0, sequence, known.to(delta.dtype))
    return (sums / tokens.clamp(min=1.0)).exp()[sequence]
