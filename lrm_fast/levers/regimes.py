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

Normalisation: by default (the study) the aggregation normalisers count every response of the batch,
so a step that keeps half of the responses makes a roughly half-size update. With `renormalise` they
count only the responses the regime keeps (weight > 0), so the kept tokens carry a full-size update.
"""

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


def apply_regime(samples: list[Sample], regime: Regime, cfg: RegimeConfig) -> None:
    """Set each sample's regime weight, and whether it is forwarded at all (in place)."""
    for s in samples:
        s.regime_weight = regime_weight(s, regime, cfg)
        s.forward = s.regime_weight > 0 and not (cfg.drop_zero_variance and s.zero_variance)


@dataclass
class RegimeSchedule:
    """The regime of each step; only neg_to_pos changes over a run, and its phase is checkpointed."""

    cfg: RegimeConfig
    switched_at: int | None = None  # last negative-only step, once neg_to_pos has switched

    def regime(self, step: int) -> Regime:
        """The phase regime of 1-based `step`."""
        if self.cfg.name != Regime.neg_to_pos:
            return Regime(self.cfg.name)
        if self.switched_at is None and self.cfg.switch_step is not None and step > self.cfg.switch_step:
            self.switched_at = self.cfg.switch_step
        return Regime.negative if self.switched_at is None else Regime(self.cfg.second_phase)

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
