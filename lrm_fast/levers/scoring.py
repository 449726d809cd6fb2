"""From a step's rollouts to scored samples: grade, inject, reward, advantages.

    grade (0/1 correctness) -> zero-variance counts "before"
      -> offline sample injection into too-hard groups (injection=osi; the injected responses are graded too)
      -> rewards: binary, or RLR on the too-easy groups (reward=rlr), plus the repetition reward of
         incorrect responses (reward.repetition_penalty)
      -> group-relative advantages on the full groups -> zero-variance counts "after"
      -> truncation masking (reward.mask_truncated): advantage 0 for masked responses

Both levers act on the final groups in that order: OSI first, so RLR sees a group's real lengths.

Truncation masking is the study's mask_truncated_samples (core_algos.py:156-161): a response is masked
when it is incorrect, fills the whole response window (its length, a final EOS included, equals
rollout.max_new_tokens: the study's `eos_mask.sum() == response_length`) and has a non-zero repetition
penalty. Its reward still enters its group's mean and std; only its own advantage becomes 0, so it
carries no policy gradient (it still counts in the normalisers and its KL and entropy terms), and its
group's zero-variance flag is unchanged.
"""

from dataclasses import dataclass, field

from lrm_fast.batching import samples as B
from lrm_fast.config import InjectionConfig, RewardConfig
from lrm_fast.config.choices import AdvantageScale, Injection, Reward
from lrm_fast.data.examples import PromptExample
from lrm_fast.data.grader import grade_batch
from lrm_fast.levers.injection import SolutionBank, plan_injections
from lrm_fast.levers.rewards import binary_rewards, relative_length_rewards, repetition_penalties
from lrm_fast.rollout import Rollout


@dataclass(frozen=True)
class ZeroVarianceCounts:
    """Groups whose responses are all correct / all wrong, and all groups."""

    all_correct: int
    all_wrong: int
    groups: int


@dataclass
class ScoredStep:
    samples: list[B.Sample]
    before: ZeroVarianceCounts  # from the sampled responses' correctness alone
    after: ZeroVarianceCounts  # zero-variance groups of the final rewards, split by final correctness
    injected: int  # responses replaced by stored solutions
    shaped_groups: int  # groups whose correct responses got the relative length reward
    # Sums of the opt-in levers, keyed as in lever_metrics; empty when they are off, so a run without them
    # logs exactly the metrics it did before they existed.
    counts: dict[str, float] = field(default_factory=dict)


def zero_variance_counts(correct: list[bool], group_size: int) -> ZeroVarianceCounts:
    groups = [correct[i : i + group_size] for i in range(0, len(correct), group_size)]
    return ZeroVarianceCounts(sum(all(g) for g in groups), sum(not any(g) for g in groups), len(groups))


def score_rollouts(
    examples: list[PromptExample],
    rollouts: list[Rollout],
    group_size: int,
    tokenizer,
    reward: RewardConfig,
    injection: InjectionConfig,
    bank: SolutionBank | None,
    advantage_scale: AdvantageScale,
    max_new_tokens: int | None = None,
) -> ScoredStep:
    """Samples with rewards and advantages for `examples` x `group_size` consecutive rollouts.

    ``max_new_tokens`` is the response window, needed by reward.mask_truncated."""
    answers = [e.answer for e in examples for _ in range(group_size)]
    correct = _grade([r.response_ids for r in rollouts], answers, tokenizer)
    samples = [
        B.Sample(r.prompt_ids, r.response_ids, 0.0, c, sampler_logprobs=r.logprobs)
        for r, c in zip(rollouts, correct, strict=True)
    ]
    before = zero_variance_counts(correct, group_size)
    injected = 0
    if injection.name == Injection.osi:
        injected = inject(samples, examples, group_size, injection, bank, answers, tokenizer)
    rewards, shaped_groups = _rewards(samples, group_size, reward)
    penalties, counts = [0.0] * len(samples), {}
    if reward.repetition_penalty:
        penalties = _repetition_penalties(samples, reward, tokenizer)
        counts["repetition_penalty"] = sum(penalties)
        counts["repetition_penalised"] = sum(p != 0 for p in penalties)
    for s, r, p in zip(samples, rewards, penalties, strict=True):
        s.reward = r + p
    B.assign_advantages(samples, group_size, advantage_scale)
    if reward.mask_truncated:
        counts["truncation_masked"] = mask_truncated(samples, penalties, max_new_tokens)
    after = _zero_variance_after(samples, group_size)
    return ScoredStep(samples, before, after, injected, shaped_groups, counts)


def mask_truncated(samples: list[B.Sample], penalties: list[float], max_new_tokens: int | None) -> int:
    """Advantage 0 for every incorrect response that fills the window and carries a repetition penalty
    (in place; see the module docstring); returns how many."""
    if max_new_tokens is None:
        raise ValueError("truncation masking needs max_new_tokens, the response window")
    masked = 0
    for s, penalty in zip(samples, penalties, strict=True):
        if not s.correct and len(s.response_ids) >= max_new_tokens and penalty != 0:
            s.advantage, masked = 0.0, masked + 1
    return masked


def lever_metrics(totals: dict[str, float]) -> dict[str, float]:
    """Per-response means of the opt-in levers' `counts`, summed over ranks (absent when off):
    the mean repetition reward (its part of reward/mean), the share of responses it penalised and the
    share whose advantage truncation masking set to 0."""
    n = max(totals["responses"], 1.0)
    names = {
        "repetition_penalty": "reward/repetition_penalty",
        "repetition_penalised": "reward/repetition_penalised",
        "truncation_masked": "reward/truncation_masked",
    }
    return {metric: totals[key] / n for key, metric in names.items() if key in totals}


def _rewards(samples: list[B.Sample], group_size: int, reward: RewardConfig) -> tuple[list[float], int]:
    """Binary or RLR rewards of the final responses, and how many groups RLR shaped."""
    correct = [s.correct for s in samples]
    if reward.name != Reward.rlr:
        return binary_rewards(correct), 0
    lengths = [len(s.response_ids) for s in samples]
    shaped = relative_length_rewards(correct, lengths, group_size, reward.tau, reward.b, reward.lo, reward.hi)
    return shaped.rewards, shaped.shaped_groups


def _repetition_penalties(samples: list[B.Sample], reward: RewardConfig, tokenizer) -> list[float]:
    """The repetition reward on the decoded prompt + response, as the study's reward manager decodes it;
    correct responses are not decoded (never penalised)."""
    incorrect = [i for i, s in enumerate(samples) if not s.correct]
    sequences = [samples[i].prompt_ids + samples[i].response_ids for i in incorrect]
    decoded = tokenizer.batch_decode(sequences, skip_special_tokens=False) if sequences else []
    texts = [""] * len(samples)
    for i, text in zip(incorrect, decoded, strict=True):
        texts[i] = text
    correct = [s.correct for s in samples]
    return repetition_penalties(texts, correct, reward.repetition_ngram, reward.repetition_penalty)


def inject(
    samples: list[B.Sample],
    examples: list[PromptExample],
    group_size: int,
    cfg: InjectionConfig,
    bank: SolutionBank,
    answers: list[str],
    tokenizer,
) -> int:
    """Replace incorrect responses of too-hard groups by stored solutions (in place); returns how many."""
    solutions = [bank.solutions(e) for e in examples]
    plan = plan_injections(
        [s.correct for s in samples], group_size, cfg.alpha, cfg.cap, [len(x) for x in solutions]
    )
    for index, solution_index in plan:
        response = solutions[index // group_size][solution_index]
        samples[index] = B.Sample(samples[index].prompt_ids, response, 0.0, False, injected=True)
    # Graded like any response: a stored "solution" that is wrong gets no reward.
    regraded = _grade([samples[i].response_ids for i, _ in plan], [answers[i] for i, _ in plan], tokenizer)
    for (index, _), correct in zip(plan, regraded, strict=True):
        samples[index].correct = correct
    return len(plan)


def _grade(responses: list[list[int]], answers: list[str], tokenizer) -> list[bool]:
    texts = tokenizer.batch_decode(responses, skip_special_tokens=False) if responses else []
    return [r > 0 for r in grade_batch(texts, answers)]


def _zero_variance_after(samples: list[B.Sample], group_size: int) -> ZeroVarianceCounts:
    all_correct = all_wrong = 0
    for start in range(0, len(samples), group_size):
        group = samples[start : start + group_size]
        if group[0].zero_variance:
            all_correct += all(s.correct for s in group)
            all_wrong += not any(s.correct for s in group)
    return ZeroVarianceCounts(all_correct, all_wrong, len(samples) // group_size)
