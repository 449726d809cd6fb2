"""Evaluation statistics users can act on: the variance of a benchmark score split into its two sources,
a paired comparison of two models on the same problems, and sample planning (Miller 2024, "Adding Error
Bars to Evals", arXiv 2411.00640).

Problem i of P has a true accuracy p_i (the chance that one sample solves it); a run draws n_i samples,
c_i of them correct, and observes a_i = c_i / n_i. The score mean_i a_i varies for two reasons:

    Var(score) = Var(p) / P  +  mean_i p_i (1 - p_i) / n_i / P
                 between        within (sampling)

The between part is what another draw of P questions from the same population would change; only the
within part shrinks with more samples per problem. Estimators, unbiased where they can be:

- s_i^2 = a_i (1 - a_i) n_i / (n_i - 1) for p_i (1 - p_i) (the plain a_i (1 - a_i) is low by (n_i-1)/n_i).
- Var(p) from S^2 = sum_i (a_i - mean a)^2 / (P - 1), whose expectation is Var(p) + mean_i p_i(1-p_i)/n_i:
  the naive S^2 counts the sampling noise twice, so the estimate is S^2 - mean_i s_i^2 / n_i, clipped at
  0 (which biases it up where the true Var(p) is near 0).

Simplifications:
- One sample of a problem says nothing about its own variance: problems with n_i = 1 get the pooled
  per-sample variance p(1-p) N/(N-1) over all N samples, as eval_stats.score_standard_error does, an
  upper bound on mean_i p_i(1-p_i). With every n_i = 1 the split is not identifiable and all the
  variance counts as within.
- Normal approximations throughout (intervals, p-values, power; statistics.NormalDist, no Student t):
  the paired test's false-positive rate at alpha = 0.05 is then about 6% with 30 problems and 5.3% with
  100, where the t distribution of the estimated standard error would give 5%.
- The paired comparison uses the pooled per-problem accuracies c_i / n_i over all rounds. For adaptive
  runs (lrm_fast/evaluation/multi_round.py) these differ from the unbiased adaptive score by O(1/n_i).
- The planner assumes that B's per-sample variances equal A's (the pilot's) and that the true
  difference is the same on every problem unless told otherwise (`between_fraction`): with the same
  questions for both models, only sampling noise then separates them.
"""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np

from lrm_fast.evaluation.stats import checked_counts, uncertain_mask

_NORMAL = NormalDist()


# ------------------------------------------------------------------------------- decomposition


def per_sample_variance(n, c) -> np.ndarray:
    """Unbiased s_i^2 = a_i (1 - a_i) n_i / (n_i - 1) of p_i (1 - p_i); the pooled p(1-p) N/(N-1) at
    n_i = 1 (see the module docstring)."""
    n, c = checked_counts(n, c)
    total, p = n.sum(), c.sum() / n.sum()
    pooled = p * (1 - p) * total / (total - 1) if total > 1 else 0.0
    a = c / n
    return np.where(n > 1, a * (1 - a) * n / np.maximum(n - 1, 1), pooled)


def effective_samples(rounds: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """n_eff_i = 1 / sum_r w_r^2 / n_ri of the adaptive score (eval_stats.adaptive_estimate, w_r the
    rounds' budget shares): its per-problem mean has the variance p_i(1-p_i) / n_eff_i of a plain mean of
    n_eff_i samples. One round: n_eff = n. Never above sum_r n_ri (Cauchy-Schwarz); the gap is the price
    of fixed round weights."""
    counts = [checked_counts(n_r, c_r) for n_r, c_r in rounds]
    budgets = np.array([n_r.sum() for n_r, _ in counts], dtype=float)
    weights = budgets / budgets.sum()
    return 1.0 / sum(w**2 / n_r for w, (n_r, _) in zip(weights, counts, strict=True))


@dataclass(frozen=True)
class VarianceDecomposition:
    """The score's variance split in two (module docstring); all variances in score units squared."""

    between_variance: float  # Var(p) / P: another draw of questions
    within_variance: float  # mean_i s_i^2 / n_eff_i / P: more samples per problem shrink it
    standard_error: float  # sqrt(between + within): the error bar for a population of questions
    question_variance: float  # Var(p), the spread of true per-question accuracy (clipped at 0)
    sample_variance: float  # mean_i s_i^2, the mean per-sample variance p_i(1-p_i)
    within_uncertain_share: float  # share of the within part from problems with a_i in (lo, hi)
    within_variance_uniform: float  # the within part had the same N samples been spread evenly
    negligible_fraction: float  # the target of samples_for_negligible
    # Samples per problem (uniform) that bring the within part to at most negligible_fraction x the
    # between part; None when the between part is 0 and the within part is not.
    samples_for_negligible: int | None

    def as_dict(self) -> dict:
        return asdict(self)


def decompose_variance(
    n, c, lo: float = 0.1, hi: float = 0.9, negligible: float = 0.1, effective_n=None
) -> VarianceDecomposition:
    """Split the variance of the score mean_i(c_i / n_i) into between and within parts (module
    docstring). `effective_n` (default n) is the per-problem sample count the score's estimator
    behaves like (`effective_samples` for adaptive rounds); it enters the within part only, since the
    between part is estimated from the pooled a_i = c_i / n_i and their own sampling noise."""
    n, c = checked_counts(n, c)
    if not negligible > 0:
        raise ValueError(f"negligible must be > 0, got {negligible}")
    effective_n = n if effective_n is None else np.asarray(effective_n, dtype=float)
    num_problems, a, s2 = len(n), c / n, per_sample_variance(n, c)
    observed = float(np.var(a, ddof=1)) if num_problems > 1 else 0.0
    question_variance = max(0.0, observed - float(np.mean(s2 / n)))
    within_terms = s2 / effective_n
    within_total = float(within_terms.sum())
    uncertain = within_terms[uncertain_mask(a, lo, hi)].sum()
    mean_s2 = float(np.mean(s2))
    if mean_s2 == 0:
        needed = 1
    elif question_variance == 0:
        needed = None
    else:
        needed = _ceil(mean_s2 / (negligible * question_variance))
    between, within = question_variance / num_problems, within_total / num_problems**2
    return VarianceDecomposition(
        between_variance=between,
        within_variance=within,
        standard_error=math.sqrt(between + within),
        question_variance=question_variance,
        sample_variance=mean_s2,
        within_uncertain_share=float(uncertain / within_total) if within_total > 0 else 0.0,
        within_variance_uniform=float(mean_s2 / n.sum()),  # mean s^2 / (N / P) / P
        negligible_fraction=negligible,
        samples_for_negligible=needed,
    )


def _ceil(x: float) -> int:
    """Smallest integer >= x, forgiving rounding: a count that is exactly 5 in real arithmetic and
    5.000000000000001 in floating point is 5."""
    return max(1, math.ceil(x * (1 - 1e-12)))


# --------------------------------------------------------------------------------- paired test


@dataclass(frozen=True, eq=False)  # eq: arrays do not compare to one bool
class ProblemResults:
    """Per-problem results of one evaluation: ids, samples n_i and correct samples c_i."""

    ids: tuple[str, ...]
    n: np.ndarray
    c: np.ndarray

    def __post_init__(self):
        n, c = checked_counts(self.n, self.c)
        if len(self.ids) != len(n):
            raise ValueError(f"{len(self.ids)} problem ids for {len(n)} problems")
        object.__setattr__(self, "ids", tuple(str(i) for i in self.ids))
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "c", c)

    @classmethod
    def of(cls, n, c) -> "ProblemResults":
        """Results whose ids are the problem indices (simulations)."""
        return cls(tuple(str(i) for i in range(len(n))), n, c)


def problem_results(entry: dict) -> ProblemResults | None:
    """Per-problem n_i and c_i of a run file's benchmark entry (lrm_fast/evaluation/multi_round.py), pooled
    over its rounds; None until every problem has a sample."""
    problems = entry["problems"]
    if not entry["rounds"] or not all(problem["samples"] for problem in problems):
        return None
    return ProblemResults(
        tuple(problem["id"] for problem in problems),
        [len(problem["samples"]) for problem in problems],
        [sum(sample["correct"] for sample in problem["samples"]) for problem in problems],
    )


def check_same_problems(a: ProblemResults, b: ProblemResults) -> None:
    """Refuse to pair evaluations of different problems (or of the same ones in another order)."""
    if a.ids == b.ids:
        return
    for index in range(max(len(a.ids), len(b.ids))):
        id_a = a.ids[index] if index < len(a.ids) else None
        id_b = b.ids[index] if index < len(b.ids) else None
        if id_a != id_b:
            raise ValueError(
                f"the evaluations are of different problems (A: {len(a.ids)}, B: {len(b.ids)} problems): "
                f"first difference at position {index}, A has {id_a!r}, B has {id_b!r}"
            )


@dataclass(frozen=True)
class PairedComparison:
    """B - A on the same problems; `difference` and the interval in score units."""

    problems: int
    score_a: float
    score_b: float
    difference: float  # mean_i (b_i - a_i)
    standard_error: float  # std_i(b_i - a_i) / sqrt(P): clustered by problem, questions random
    sampling_standard_error: float  # sqrt(sum_i s2_ai/n_ai + s2_bi/n_bi) / P: these problems fixed
    level: float
    ci_low: float
    ci_high: float
    p_value: float  # two-sided, H0: no difference
    b_better: int  # problems with b_i > a_i
    b_worse: int
    ties: int
    gained: list[str] = field(default_factory=list)  # ids with a_i < 0.5 <= b_i
    lost: list[str] = field(default_factory=list)  # ids with b_i < 0.5 <= a_i

    def as_dict(self) -> dict:
        return asdict(self)


def paired_comparison(a: ProblemResults, b: ProblemResults, level: float = 0.95) -> PairedComparison:
    """Paired comparison of two evaluations of the same problems (Miller 2024's clustered, paired test).

    With d_i = b_i - a_i the per-problem accuracy differences, the estimate is mean_i d_i and its
    standard error std(d, ddof=1) / sqrt(P): the problem is the cluster, so the questions' shared
    difficulty cancels and what remains is how much the difference itself varies across questions plus
    both models' sampling noise. The interval and the p-value are normal approximations.
    """
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    check_same_problems(a, b)
    acc_a, acc_b = a.c / a.n, b.c / b.n
    d = acc_b - acc_a
    num_problems, difference = len(d), float(np.mean(d))
    se = float(np.std(d, ddof=1) / math.sqrt(num_problems)) if num_problems > 1 else 0.0
    sampling = per_sample_variance(a.n, a.c) / a.n + per_sample_variance(b.n, b.c) / b.n
    half_width = _NORMAL.inv_cdf((1 + level) / 2) * se
    # A zero standard error (every d_i equal) leaves no doubt: p = 1 at no difference, else 0.
    z = abs(difference) / se if se > 0 else (0.0 if difference == 0 else math.inf)
    p_value = 2 * _NORMAL.cdf(-z)
    ids = np.array(a.ids, dtype=object)
    return PairedComparison(
        problems=num_problems,
        score_a=float(np.mean(acc_a)),
        score_b=float(np.mean(acc_b)),
        difference=difference,
        standard_error=se,
        sampling_standard_error=float(math.sqrt(sampling.sum()) / num_problems),
        level=level,
        ci_low=difference - half_width,
        ci_high=difference + half_width,
        p_value=float(p_value),
        b_better=int(np.sum(d > 0)),
        b_worse=int(np.sum(d < 0)),
        ties=int(np.sum(d == 0)),
        gained=ids[(acc_a < 0.5) & (acc_b >= 0.5)].tolist(),
        lost=ids[(acc_b < 0.5) & (acc_a >= 0.5)].tolist(),
    )


# ------------------------------------------------------------------------------------ planning


def paired_power(difference: float, standard_error: float, alpha: float = 0.05) -> float:
    """Chance that the two-sided level-alpha normal test rejects when the true difference is
    `difference` and the estimate's standard error is `standard_error`."""
    if standard_error == 0:
        return 1.0 if difference != 0 else alpha
    z = _NORMAL.inv_cdf(1 - alpha / 2)
    shift = abs(difference) / standard_error
    return _NORMAL.cdf(shift - z) + _NORMAL.cdf(-shift - z)


def _check_plan(difference, power, alpha, problems, between_fraction) -> None:
    if difference == 0:
        raise ValueError("difference must be non-zero: a zero difference cannot be detected")
    for name, value in (("power", power), ("alpha", alpha)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    if between_fraction < 0:
        raise ValueError(f"between_fraction must be >= 0, got {between_fraction}")
    if problems is not None and problems < 1:
        raise ValueError(f"problems must be >= 1, got {problems}")


def plan_samples(
    pilot_n,
    pilot_c,
    difference: float,
    power: float = 0.8,
    alpha: float = 0.05,
    problems: int | None = None,
    between_fraction: float = 0.0,
) -> list[dict]:
    """Samples per problem a paired comparison needs to detect `difference` with `power` at `alpha`.

    For P problems with k samples each of both models, the paired difference has

        Var(mean d) = (tau^2 + 2 s^2 / k) / P,  s^2 = mean_i s_i^2 of the pilot,
        tau^2 = between_fraction x Var(p) of the pilot

    tau^2 is how much the true difference varies across questions: 0 (the default) assumes the same
    difference on every problem, so with the same questions for both models only their sampling noise
    counts. Pairing pays because two models' per-question scores are correlated (Miller 2024); a
    positive fraction says how far the per-question differences still spread. The power target needs
    SE <= |difference| / (z_{1-alpha/2} + z_power), so

        k = ceil(2 s^2 / (P SE^2 - tau^2)),  none when P SE^2 <= tau^2 (more samples cannot get there).

    Returns rows {problems, samples_per_problem, standard_error, power} (power achieved at that k; with
    no k, the standard error and power of infinitely many samples): one for `problems`, or, when it is
    None, for 0.5, 1, 2 and 4 times the pilot's problem count (more than the pilot has means new
    questions from the same population).
    """
    pilot_n, pilot_c = checked_counts(pilot_n, pilot_c)
    _check_plan(difference, power, alpha, problems, between_fraction)
    pilot = decompose_variance(pilot_n, pilot_c)
    s2, tau2 = pilot.sample_variance, between_fraction * pilot.question_variance
    target = abs(difference) / (_NORMAL.inv_cdf(1 - alpha / 2) + _NORMAL.inv_cdf(power))
    num_pilot = len(pilot_n)
    counts = (
        [problems] if problems is not None else sorted({max(2, round(f * num_pilot)) for f in (0.5, 1, 2, 4)})
    )
    rows = []
    for num_problems in counts:
        room = num_problems * target**2 - tau2
        if s2 == 0 or room > 0:
            k = 1 if s2 == 0 else _ceil(2 * s2 / room)
            se = math.sqrt((tau2 + 2 * s2 / k) / num_problems)
        else:
            k, se = None, math.sqrt(tau2 / num_problems)
        rows.append(
            {
                "problems": num_problems,
                "samples_per_problem": k,
                "standard_error": se,
                "power": paired_power(difference, se, alpha),
            }
        )
    return rows
