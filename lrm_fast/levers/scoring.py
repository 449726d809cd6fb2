"""From a step's rollouts to scored samples: grade, inject, reward, advantages.

    grade (0/1 correctness) -> zero-variance counts "before"
      -> offline sample injection into too-hard groups (injection=osi; the injected responses are graded too)
      -> rewards: binary, or RLR on the too-easy groups (reward=rlr)
      -> group-relative advantages on the full groups -> zero-variance counts "after"

Both levers act on the final groups in that order: OSI first, so RLR sees a group's real lengths.
"""

from dataclasses import dataclass

from lrm_fast.batching import samples as B
from lrm_fast.config import InjectionConfig, RewardConfig
from lrm_fast.config.choices import AdvantageScale, Injection, Reward
from lrm_fast.data.examples import PromptExample
from lrm_fast.data.grader import grade_batch
from lrm_fast.levers.injection import SolutionBank, plan_injections
from lrm_fast.levers.rewards import binary_rewards, relative_length_rewards
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
) -> ScoredStep:
    """Samples with rewards and advantages for `examples` x `group_size` consecutive rollouts."""
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
    correct = [s.correct for s in samples]
    shaped_groups = 0
    if reward.name == Reward.rlr:
        lengths = [len(s.response_ids) for s in samples]
        shaped = relative_length_rewards(
            correct, lengths, group_size, reward.tau, reward.b, reward.lo, reward.hi
        )
        rewards, shaped_groups = shaped.rewards, shaped.shaped_groups
    else:
        rewards = binary_rewards(correct)
    for s, r in zip(samples, rewards, strict=True):
        s.reward = r
    B.assign_advantages(samples, group_size, advantage_scale)
    after = _zero_variance_after(samples, group_size)
    return ScoredStep(samples, before, after, injected, shaped_groups)


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
