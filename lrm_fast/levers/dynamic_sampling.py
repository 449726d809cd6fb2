"""Dynamic sampling (DAPO, Yu et al. 2025 §3.2): sample until the batch holds B informative groups.

Over half of a GRPO step's groups can be zero-variance: all correct or all wrong, advantage 0, no policy
gradient. Dynamic sampling draws rounds of prompts, scores them as a static step would (grading, OSI,
rewards, RLR, advantages: lrm_fast/levers/scoring.py), keeps the informative groups and draws again until
B of them are found:

    round r = 1, 2, ...: sample ceil(oversample * B) prompts x G responses, score them
        keep the informative groups, in sampling order, until the quota is full (later ones are dropped)
        stop when every rank's quota is full, or after max_rounds rounds

A group is informative when its final groups' rewards vary (`informative=reward`: RLR can make an
all-correct group informative, OSI an all-wrong one) or, with `informative=correctness`, when it holds both
correct and incorrect final responses (DAPO's metric=acc; OSI still counts, RLR does not). Both are
judged after the levers, on the groups the update would see.

When the rounds run out first, `when_short=fewer` (the default) trains on the informative groups found:
zero-variance groups have A = 0 and carry no policy gradient, so adding them back would only shrink the
step through the normalisers and cost forward passes (with the KL in the reward, reward.kl_coef, their
advantages are the KL's noise instead, and padding trains on it). `pad` tops the batch up to B with the
zero-variance groups sampled, in sampling order, so the normalisers count B groups as in a static step
(the configuration to compare step sizes with static runs).

With several ranks each keeps its own share of B (its quota), and all ranks run the same number of rounds:
a round ends for all once every quota is full (one all-reduce per round), so the collectives of generation
and of the update stay in step. Every generated token is counted, dropped groups' included: that is the
price of dynamic sampling that the token-budget comparison in docs/SWEEPS.md weighs.
"""

from collections.abc import Callable
from dataclasses import dataclass

from lrm_fast.batching.samples import Sample
from lrm_fast.config import SamplingConfig
from lrm_fast.config.choices import Informative, ShortBatch
from lrm_fast.levers.scoring import ScoredStep, ZeroVarianceCounts


@dataclass
class Selection:
    """The groups a step trains on, and what sampling them took (this rank's numbers)."""

    samples: list[Sample]  # the trained groups, G consecutive responses each
    sampled: ScoredStep  # every round's groups together: the step's response metrics describe these
    rounds: int = 1
    prompts: int = 0  # prompts sampled over all rounds
    generated_tokens: int = 0  # response tokens generated over all rounds (injected solutions excluded)
    informative: int = 0  # informative groups found (kept or not)
    kept: int = 0  # informative groups trained on
    padded: int = 0  # zero-variance groups added by when_short=pad


def static_selection(scored: ScoredStep, group_size: int) -> Selection:
    """A static step's selection: every sampled group, one round."""
    prompts = len(scored.samples) // group_size
    return Selection(scored.samples, scored, prompts=prompts, generated_tokens=scored.generated_tokens)


def is_informative(group: list[Sample], rule: Informative) -> bool:
    """Whether a final group carries a policy gradient signal under `rule` (see the module docstring)."""
    if rule == Informative.correctness:
        return any(s.correct for s in group) and not all(s.correct for s in group)
    return not group[0].zero_variance


def groups_of(samples: list[Sample], group_size: int) -> list[list[Sample]]:
    return [samples[i : i + group_size] for i in range(0, len(samples), group_size)]


def select_groups(
    draw: Callable[[], ScoredStep | None],
    quota: int,
    group_size: int,
    cfg: SamplingConfig,
    all_full: Callable[[bool], bool] = lambda full: full,
) -> Selection | None:
    """Draw scored rounds with `draw()` until `quota` informative groups are kept (on every rank:
    `all_full` reduces this rank's flag over ranks) or cfg.max_rounds rounds have run.

    `draw` returns None when sampling failed (non-finite logits on some rank); the step is then None."""
    rounds, kept, zero_variance = [], [], []
    while True:
        scored = draw()
        if scored is None:
            return None
        rounds.append(scored)
        for group in groups_of(scored.samples, group_size):
            target = kept if is_informative(group, cfg.informative) else zero_variance
            target.append(group)
        if all_full(len(kept) >= quota) or len(rounds) == cfg.max_rounds:
            break
    informative, kept = len(kept), kept[:quota]
    padded = []
    if cfg.when_short == ShortBatch.pad:
        padded = zero_variance[: max(quota - len(kept), 0)]
    trained = [s for group in kept + padded for s in group]
    return Selection(
        trained,
        merged(rounds),
        rounds=len(rounds),
        prompts=sum(len(r.samples) for r in rounds) // group_size,
        generated_tokens=sum(r.generated_tokens for r in rounds),
        informative=informative,
        kept=len(kept),
        padded=len(padded),
    )


def merged(rounds: list[ScoredStep]) -> ScoredStep:
    """One ScoredStep of several rounds' groups: samples concatenated, counts summed."""
    if len(rounds) == 1:
        return rounds[0]

    def total(attribute: str) -> ZeroVarianceCounts:
        counts = [getattr(r, attribute) for r in rounds]
        return ZeroVarianceCounts(
            *(sum(getattr(c, k) for c in counts) for k in ("all_correct", "all_wrong", "groups"))
        )

    counts: dict[str, float] = {}
    for r in rounds:
        for key, value in r.counts.items():
            counts[key] = counts.get(key, 0.0) + value
    return ScoredStep(
        [s for r in rounds for s in r.samples],
        total("before"),
        total("after"),
        sum(r.injected for r in rounds),
        sum(r.shaped_groups for r in rounds),
        counts,
        generated_tokens=sum(r.generated_tokens for r in rounds),
    )
