"""Sample regimes (PAPER.md §2): which responses of a step enter the update, and with what weight.

    full        every response, weight 1
    positive    positive responses only (PSR)
    negative    negative responses only (NSR)
    weighted    positives x positive_weight, negatives x negative_weight (W-REINFORCE: 0.1 / 1)
    neg_to_pos  negative-only until a step count or a held-out accuracy, then full or positive

As in the study's code, advantages are computed on the full group first; the regime then only
multiplies each response's aggregation weight by 0 (dropped) or a scale. A response with weight 0
carries no gradient and is never forwarded through the model.

Positive / negative: by correctness (the study's code) or by advantage sign. With 0/1 rewards they
differ only in zero-variance groups (A = 0): by correctness an all-correct group is positive, by
sign it is neither (weight 1 under `weighted`, dropped under `positive` and `negative`); with RLR
rewards a correct response can have a negative advantage, and there the choice matters.

Reserve (the study's cut_down_samples_reserve_ratio and _min_num, ray_trainer.py:767-809): under
positive and negative (neg_to_pos's phases included), each response the regime would drop is kept with
probability `reserve_ratio` (weight 1), in batch order, one draw each; then, while fewer than
`reserve_min` responses are kept (wanted ones included, as the study counts them), dropped ones are kept
at random. Its scripts set 0 and 0: nothing unwanted is kept, and no random number is drawn. The draws
come from a generator of their own, seeded by (seed, rank, step), so a run is the same for its seed and a
resumed run draws what the uninterrupted one would, with no state to checkpoint; the global RNGs that
sampling uses are never touched.

Differences from the study, which draws from Python's global `random` over the whole batch: each rank
draws for its own responses and counts the minimum over them (one process: the whole batch); a minimum
above the number of responses keeps them all (the study fails); a step that keeps nothing carries no
policy gradient (the study skips it). The study also trims the kept set at random to a multiple of its
GPU count, so that its data-parallel split is even: an artefact of its launcher, not copied (every rank
here updates on whatever it kept).

Normalisation: by default (the study) the aggregation normalisers count every response of the batch,
so a step that keeps K of S responses makes a smaller update, by a factor that the aggregation decides:

    token_mean, token_sum                  sum_kept L_i / sum_all L_i    the kept share of tokens
    seq_mean_token_mean, _token_sum_norm   K / S                         each weight divides by S
    micro_batch_token_mean, _token_sum     K / S                         the study's (dp_actor.py:351-353)

The study's loss is each micro-batch's token mean (or sum) times that micro-batch's share of the S
sequences, and the pruned responses are gone from its micro-batches, so its step shrinks by K/S. With
token_mean a regime that keeps the longer responses (negative-only: incorrect responses run longer) makes
a larger step than the study's, one that keeps the shorter ones a smaller step; the study's factor is the
study's aggregation, not a separate option. With `renormalise` the normalisers count only the responses
the regime keeps (weight > 0), so the kept tokens carry a full-size update.
"""

import random
from dataclasses import dataclass

from lrm_fast.batching.samples import Sample
from lrm_fast.config import RegimeConfig
from lrm_fast.config.choices import Regime, SelectBy


def is_positive(sample: Sample, select_by: SelectBy) -> bool:
    return sample.correct if select_by == SelectBy.correctness else sample.advantage > 0


def is_negative(sample: Sample, select_by: SelectBy) -> bool:
    return not sample.correct if select_by == SelectBy.correctness else sample.advantage < 0


def regime_weight(sample: Sample, regime: Regime, cfg: RegimeConfig) -> float:
    """The factor of one response's loss under `regime` (a phase: never neg_to_pos)."""
    positive, negative = is_positive(sample, cfg.select_by), is_negative(sample, cfg.select_by)
    if regime == Regime.full:
        return 1.0
    if regime == Regime.positive:
        return 1.0 if positive else 0.0
    if regime == Regime.negative:
        return 1.0 if negative else 0.0
    if regime == Regime.weighted:
        return cfg.positive_weight if positive else cfg.negative_weight if negative else 1.0
    raise ValueError(f"unknown regime {regime!r}")


def apply_regime(
    samples: list[Sample], regime: Regime, cfg: RegimeConfig, rng: random.Random | None = None
) -> None:
    """Set each sample's regime weight, and whether it is forwarded at all (in place).

    ``rng`` draws the reserve (see the module docstring); needed only when it is on."""
    for s in samples:
        s.regime_weight = regime_weight(s, regime, cfg)
    if regime in (Regime.positive, Regime.negative) and (cfg.reserve_ratio > 0 or cfg.reserve_min > 0):
        if rng is None:
            raise ValueError("regime.reserve_ratio / reserve_min need a random generator (rng)")
        for i in reserved(samples, cfg.reserve_ratio, cfg.reserve_min, rng):
            samples[i].regime_weight = 1.0
    for s in samples:
        # A zero-variance group whose advantages are not 0 (the KL in the reward) carries gradient.
        no_gradient = s.zero_variance and s.advantage == 0
        s.forward = s.regime_weight > 0 and not s.filtered and not (cfg.drop_zero_variance and no_gradient)


def reserved(samples: list[Sample], ratio: float, minimum: int, rng: random.Random) -> list[int]:
    """Indices of the dropped responses (weight 0) kept by the reserve: each with probability `ratio`,
    then more at random until at least `minimum` responses in all are kept (or every one is)."""
    dropped = [i for i, s in enumerate(samples) if s.regime_weight == 0]
    kept = [i for i in dropped if rng.random() < ratio]
    shortfall = minimum - (len(samples) - len(dropped) + len(kept))
    if shortfall > 0:
        chosen = set(kept)
        rest = [i for i in dropped if i not in chosen]
        kept += rng.sample(rest, min(shortfall, len(rest)))
    return sorted(kept)


@dataclass
class RegimeSchedule:
    """The regime of each step; only neg_to_pos changes over a run, and its phase is checkpointed."""

    cfg: RegimeConfig
    switched_at: int | None = None  # last negative-only step, once neg_to_pos has switched
    seed: int = 0  # the run's seed and this process's rank: the reserve's draws (rng)
    rank: int = 0

    def regime(self, step: int) -> Regime:
        """The phase regime of 1-based `step`."""
        if self.cfg.name != Regime.neg_to_pos:
            return Regime(self.cfg.name)
        if self.switched_at is None and self.cfg.switch_step is not None and step > self.cfg.switch_step:
            self.switched_at = self.cfg.switch_step
        return Regime.negative if self.switched_at is None else Regime(self.cfg.second_phase)

    def rng(self, step: int) -> random.Random:
        """The reserve's generator of 1-based `step`: a function of (seed, rank, step) alone, so a resumed
        run draws the same numbers without checkpointed state (a str seed is hashed with SHA-512,
        the same on every Python process)."""
        return random.Random(f"regime-reserve/{self.seed}/{self.rank}/{step}")

    def observe_heldout_accuracy(self, step: int, accuracy: float) -> None:
        """After an evaluation at `step`: switch from the next step on if the threshold is reached."""
        threshold = self.cfg.switch_accuracy
        waiting = self.cfg.name == Regime.neg_to_pos and self.switched_at is None and threshold is not None
        if waiting and accuracy >= threshold:
            self.switched_at = step

    def state_dict(self) -> dict:
        return {"switched_at": self.switched_at}

    def load_state_dict(self, state: dict) -> None:
        self.switched_at = state["switched_at"]
