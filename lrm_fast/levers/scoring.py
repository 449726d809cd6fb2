"""From a step's rollouts to scored samples: grade, inject, reward, advantages.

    grade (0/1 correctness) -> zero-variance counts "before"
      -> offline sample injection into too-hard groups (injection=osi; the injected responses are graded too)
      -> rewards: binary, or RLR on the too-easy groups (reward=rlr), plus the repetition reward of
         incorrect responses (reward.repetition_penalty) and DAPO's soft overlong punishment
         (reward.overlong_buffer)
      -> group-relative advantages on the full groups -> zero-variance counts "after"
      -> the KL in the reward (reward.kl_coef): -coef * sum_t (log pi - log pi_ref) added to each reward,
         then the advantages again
      -> truncated responses (reward.truncated): masked or filtered

Both levers act on the final groups in that order: OSI first, so RLR sees a group's real lengths.

The KL in the reward (the study's runs without a KL loss, ray_trainer.py apply_kl_penalty) makes every
group's rewards differ, so the group std turns KL noise into advantages, as in the study. What the group
logic decides still goes by the task reward (everything but the KL): the zero-variance flags and counts,
dynamic sampling's informative rule and RLR's threshold (by accuracy). A zero-variance group then has
advantages, so regime.drop_zero_variance leaves it in the update (lrm_fast/levers/regimes.py).

Truncated responses, one implementation with two rules. A response is truncated when it fills the whole
response window: its length, a final EOS included, equals rollout.max_new_tokens (the study's
`eos_mask.sum() == response_length`). Its reward enters its group's mean and std under both rules, and
its group's zero-variance flag is unchanged; then

    mask    (the study's mask_truncated_samples, core_algos.py:156-161) if it is also incorrect and has a
            non-zero repetition penalty: advantage 0, so no policy gradient; it still counts in the
            normalisers and in its KL and entropy terms;
    filter  (DAPO's overlong filtering) if its last token is not EOS, i.e. generation was cut, not ended
            (an EOS that lands on the last allowed token ends the response): out of the loss altogether,
            KL and entropy included, and out of the normalisers (Sample.filtered).
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from lrm_fast.batching import samples as B
from lrm_fast.config import InjectionConfig, RewardConfig
from lrm_fast.config.choices import AdvantageEstimator, AdvantageScale, Injection, Reward, Truncated
from lrm_fast.data.examples import PromptExample
from lrm_fast.data.grader import grade_batch
from lrm_fast.levers.injection import SolutionBank, plan_injections
from lrm_fast.levers.rewards import (
    binary_rewards,
    overlong_penalties,
    relative_length_rewards,
    repetition_penalties,
)
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
    # Response tokens the sampler generated (injected solutions replace generated responses: those count
    # with the lengths they were generated with).
    generated_tokens: int = 0


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
    log_ratios: Callable[[list[B.Sample]], list[float]] | None = None,
    estimator: AdvantageEstimator = AdvantageEstimator.grpo,
) -> ScoredStep:
    """Samples with rewards and advantages for `examples` x `group_size` consecutive rollouts.

    ``max_new_tokens`` is the response window, needed by reward.truncated and reward.overlong_buffer;
    ``log_ratios`` gives each final response's sum_t (log pi - log pi_ref), needed by reward.kl_coef;
    ``estimator`` the group part of the advantage (REINFORCE++'s batch scale is the trainer's)."""
    answers = [e.answers for e in examples for _ in range(group_size)]
    correct = _grade([r.response_ids for r in rollouts], answers, tokenizer, reward.think_format)
    samples = [
        B.Sample(r.prompt_ids, r.response_ids, 0.0, c, sampler_logprobs=r.logprobs)
        for r, c in zip(rollouts, correct, strict=True)
    ]
    before = zero_variance_counts(correct, group_size)
    injected = 0
    if injection.name == Injection.osi:
        injected = inject(
            samples, examples, group_size, injection, bank, answers, tokenizer, reward.think_format
        )
    shaped_groups, penalties, counts = _assign_rewards(samples, group_size, reward, tokenizer, max_new_tokens)
    B.assign_advantages(samples, group_size, advantage_scale, estimator=estimator)
    if reward.kl_coef:
        if log_ratios is None:
            raise ValueError("reward.kl_coef needs the log-ratios to the reference (log_ratios)")
        ratios = log_ratios(samples)
        counts["kl_penalty"] = kl_in_reward(
            samples, ratios, reward.kl_coef, group_size, advantage_scale, estimator
        )
    if reward.truncated != Truncated.keep:
        eos = tokenizer.eos_token_id
        counts["truncation_masked"] = mask_truncated(
            samples, penalties, max_new_tokens, reward.truncated, eos
        )
    after = _zero_variance_after(samples, group_size)
    generated = sum(len(r.response_ids) for r in rollouts)
    return ScoredStep(samples, before, after, injected, shaped_groups, counts, generated)


def _assign_rewards(
    samples: list[B.Sample], group_size: int, reward: RewardConfig, tokenizer, max_new_tokens: int | None
) -> tuple[int, list[float], dict[str, float]]:
    """Each sample's final reward: binary or RLR, plus the repetition and overlong rewards (in place).
    Returns the RLR-shaped groups, the repetition penalties (truncation masking reads them) and the
    opt-in levers' counts."""
    rewards, shaped_groups = _rewards(samples, group_size, reward)
    penalties, counts = [0.0] * len(samples), {}
    if reward.repetition_penalty:
        penalties = _repetition_penalties(samples, reward, tokenizer)
        counts["repetition_penalty"] = sum(penalties)
        counts["repetition_penalised"] = sum(p != 0 for p in penalties)
    overlong = [0.0] * len(samples)
    if reward.overlong_buffer:
        lengths = [len(s.response_ids) for s in samples]
        overlong = overlong_penalties(
            lengths, max_new_tokens, reward.overlong_buffer, reward.overlong_penalty
        )
        counts["overlong_penalty"] = sum(overlong)
        counts["overlong_penalised"] = sum(p != 0 for p in overlong)
    for s, r, p, o in zip(samples, rewards, penalties, overlong, strict=True):
        s.reward = r + p + o
    return shaped_groups, penalties, counts


def kl_in_reward(
    samples: list[B.Sample],
    log_ratios: list[float],
    coef: float,
    group_size: int,
    advantage_scale: AdvantageScale,
    estimator: AdvantageEstimator = AdvantageEstimator.grpo,
) -> float:
    """Subtract coef * sum_t (log pi - log pi_ref) from each reward and recompute the advantages, keeping
    the zero-variance flags of the task rewards (see the module docstring). Returns the summed penalty."""
    task_zero_variance = [s.zero_variance for s in samples]
    for s, log_ratio in zip(samples, log_ratios, strict=True):
        s.reward -= coef * log_ratio
    B.assign_advantages(samples, group_size, advantage_scale, estimator=estimator)
    for s, flag in zip(samples, task_zero_variance, strict=True):
        s.zero_variance = flag
    return -coef * sum(log_ratios)


def mask_truncated(
    samples: list[B.Sample],
    penalties: list[float],
    max_new_tokens: int | None,
    rule: Truncated = Truncated.mask,
    eos_token_id: int | None = None,
) -> int:
    """Apply `rule` to the truncated responses, in place (see the module docstring): mask sets the
    advantage of the incorrect, repetition-penalised ones to 0; filter takes those without a final EOS
    out of the loss. Returns how many responses the rule took."""
    if max_new_tokens is None:
        raise ValueError("the truncation rules need max_new_tokens, the response window")
    taken = 0
    for s, penalty in zip(samples, penalties, strict=True):
        if len(s.response_ids) < max_new_tokens:
            continue
        if rule == Truncated.mask and not s.correct and penalty != 0:
            s.advantage, taken = 0.0, taken + 1
        elif rule == Truncated.filter and s.response_ids[-1] != eos_token_id:
            s.filtered, s.forward, taken = True, False, taken + 1
    return taken


def lever_metrics(totals: dict[str, float]) -> dict[str, float]:
    """Per-response means of the opt-in levers' `counts`, summed over ranks (absent when off):
    the mean repetition reward (its part of reward/mean), the share of responses it penalised and the
    share whose advantage truncation masking set to 0 (or that overlong filtering removed), and the mean
    overlong reward and the share of responses it penalised."""
    n = max(totals["responses"], 1.0)
    names = {
        "repetition_penalty": "reward/repetition_penalty",
        "repetition_penalised": "reward/repetition_penalised",
        "truncation_masked": "reward/truncation_masked",
        "overlong_penalty": "reward/overlong_penalty",
        "overlong_penalised": "reward/overlong_penalised",
        "kl_penalty": "reward/kl_penalty",
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
    answers: list[tuple[str, ...]],
    tokenizer,
    think_format: bool = False,
) -> int:
    """Replace incorrect responses of too-hard groups by stored solutions (in place); returns how many.
    `answers`: each response's accepted answers; `think_format`: the grader's rule (reward.think_format)."""
    solutions = [bank.solutions(e) for e in examples]
    plan = plan_injections(
        [s.correct for s in samples], group_size, cfg.alpha, cfg.cap, [len(x) for x in solutions]
    )
    for index, solution_index in plan:
        response = solutions[index // group_size][solution_index]
        samples[index] = B.Sample(samples[index].prompt_ids, response, 0.0, False, injected=True)
    # Graded like any response, by the same rule: a stored "solution" that is wrong gets no reward.
    regraded = _grade(
        [samples[i].response_ids for i, _ in plan], [answers[i] for i, _ in plan], tokenizer, think_format
    )
    for (index, _), correct in zip(plan, regraded, strict=True):
        samples[index].correct = correct
    return len(plan)


def _grade(
    responses: list[list[int]], answers: list[tuple[str, ...]], tokenizer, think_format: bool
) -> list[bool]:
    """Correctness of each response against its accepted answers, by reward.think_format's rule."""
    texts = tokenizer.batch_decode(responses, skip_special_tokens=False) if responses else []
    return [r > 0 for r in grade_batch(texts, answers, think_format=think_format)]


def _zero_variance_after(samples: list[B.Sample], group_size: int) -> ZeroVarianceCounts:
    all_correct = all_wrong = 0
    for start in range(0, len(samples), group_size):
        group = samples[start : start + group_size]
        if group[0].zero_variance:
            all_correct += all(s.correct for s in group)
            all_wrong += not any(s.correct for s in group)
    return ZeroVarianceCounts(all_correct, all_wrong, len(samples) // group_size)
