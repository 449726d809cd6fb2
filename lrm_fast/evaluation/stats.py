"""Statistics for sampled evaluation of reasoning models on small benchmarks (PAPER.md §6).

A run gives, per problem i of P, n_i sampled responses of which c_i are correct. From these: pass@k
(Chen et al. 2021), maj@k (majority vote), the avg@k score mean_i(c_i/n_i) with its standard error and
confidence intervals, the uncertain problems (per-problem accuracy strictly inside (lo, hi)) and their
share of the score's variance, and adaptive allocation of further samples to the problems that make the
score noisy.

Simplifications:
- Problems are fixed and the samples are the randomness: the intervals are about the score this benchmark
  would get with infinitely many samples per problem, not about a population of problems.
- The intervals use add-one smoothed accuracies p~_i = (c_i+1)/(n_i+2) in the variance, so a problem seen
  at 0/n or n/n still adds width (its true p_i may be 0.02). With many truly certain problems they are
  therefore slightly conservative.
- Adaptive evaluation fixes the per-round budgets in advance, gives every problem at least one sample per
  round and weights round means by the rounds' shares of the total budget: exactly unbiased (see
  `adaptive_estimate`), at a small variance cost against pooling all samples, which is biased.
"""

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

Vote = tuple[Hashable | None, bool]  # (extracted answer key, is that answer correct); None: no answer


def checked_counts(n, c) -> tuple[np.ndarray, np.ndarray]:
    """(n, c) as int64 arrays, checked: one entry per problem, n_i >= 1 and 0 <= c_i <= n_i."""
    n, c = np.asarray(n, dtype=np.int64), np.asarray(c, dtype=np.int64)
    if n.ndim != 1 or n.shape != c.shape or n.size == 0:
        raise ValueError(f"n and c must be non-empty 1-D arrays of one length, got {n.shape}, {c.shape}")
    if (n < 1).any() or (c < 0).any() or (c > n).any():
        raise ValueError("every problem needs n_i >= 1 and 0 <= c_i <= n_i")
    return n, c


def _smoothed(n: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (c + 1) / (n + 2)


# ------------------------------------------------------------------------------------- pass@k, maj@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021):

        pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i)

    The product form avoids the huge binomials (C(64, 32) ~ 1.8e18) and the cancellation of their ratio.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0  # every k-subset holds a correct sample
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_curve(n, c) -> np.ndarray:
    """Benchmark pass@k for k = 1..min_i n_i (entry k-1): mean_i [1 - C(n_i-c_i, k) / C(n_i, k)].

    k stops at the smallest n_i because pass@k of a problem with fewer than k samples is not estimable.
    """
    n, c = checked_counts(n, c)
    ks = np.arange(1, n.min() + 1)
    curve = np.zeros(len(ks))
    for n_i, c_i in zip(n, c, strict=True):
        i = np.arange(n_i - c_i + 1, n_i + 1)
        # For k > n_i - c_i the factor at i = k is exactly 0, so pass@k = 1 needs no special case.
        curve += 1.0 - np.prod(1.0 - ks[:, None] / i[None, :], axis=1)
    return curve / len(n)


def _majority_correct(votes: Sequence[Vote]) -> list[bool]:
    """For every prefix length k: is the most frequent answer among the first k samples correct?"""
    counts, first, correct = {}, {}, {}
    winner, out = None, []
    for index, (key, is_correct) in enumerate(votes):
        if key is not None:  # no answer never wins a vote
            if key not in counts:
                counts[key], first[key], correct[key] = 0, index, bool(is_correct)
            counts[key] += 1
            # Only this key's count moved, so it is the only possible new winner; ties go to the earlier.
            if winner is None or (counts[key], -first[key]) > (counts[winner], -first[winner]):
                winner = key
        out.append(winner is not None and correct[winner])
    return out


def maj_at_k_curve(samples: Sequence[Sequence[Vote]]) -> np.ndarray:
    """maj@k for k = 1..min_i n_i: the fraction of problems whose most frequent answer key among k of their
    samples is correct, averaged for every problem over its n_i cyclic windows of k consecutive samples.

    With independent samples every window is distributed as the first k samples, so the average is
    unbiased and less noisy than the first k alone, and every sample counts equally: maj@1 is exactly
    pass@1 (the mean correctness). Ties go to the key seen first in the window; None (no extracted answer)
    never wins, and a window with only None answers counts as wrong. A key's correctness is taken from
    its first occurrence (the grader gives one key one verdict).
    """
    if not samples or any(len(votes) == 0 for votes in samples):
        raise ValueError("maj@k needs at least one problem and one sample per problem")
    k_max = min(len(votes) for votes in samples)
    wins = np.zeros(k_max)
    for votes in samples:
        votes = list(votes)
        windows = [_majority_correct(votes[r:] + votes[:r])[:k_max] for r in range(len(votes))]
        wins += np.mean(windows, axis=0)
    return wins / len(samples)


def maj_at_k(samples: Sequence[Sequence[Vote]], k: int) -> float:
    """maj@k of the benchmark for one k (see `maj_at_k_curve`); needs 1 <= k <= min_i n_i."""
    curve = maj_at_k_curve(samples)
    if not 1 <= k <= len(curve):
        raise ValueError(f"maj@k needs 1 <= k <= min n_i = {len(curve)}, got k={k}")
    return float(curve[k - 1])


# ------------------------------------------------------------------------------ uncertain problems


def uncertain_mask(per_problem_acc, lo: float = 0.1, hi: float = 0.9) -> np.ndarray:
    """Uncertain problems: per-problem accuracy strictly inside (lo, hi). The paper does not publish its
    thresholds (PAPER.md §7); 0.1 and 0.9 are this project's defaults."""
    acc = np.asarray(per_problem_acc, dtype=float)
    return (acc > lo) & (acc < hi)


def _bernoulli_variance(n: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Unbiased variance of one sample's correctness, s_i^2 = p_i (1 - p_i) n_i / (n_i - 1); 0 at n_i = 1."""
    p = c / n
    return np.where(n > 1, p * (1 - p) * n / np.maximum(n - 1, 1), 0.0)


def variance_share(n, c, lo: float = 0.1, hi: float = 0.9) -> float:
    """The uncertain problems' share of the estimated variance of the avg@k score mean_i(c_i/n_i):

        Var = sum_i s_i^2 / n_i / P^2,  share = sum_{i uncertain} s_i^2 / n_i / sum_i s_i^2 / n_i

    with s_i^2 the unbiased within-problem variance. 0 when the variance is 0 (then nothing is uncertain).
    """
    n, c = checked_counts(n, c)
    per_problem = _bernoulli_variance(n, c) / n
    total = per_problem.sum()
    if total == 0:
        return 0.0
    return float(per_problem[uncertain_mask(c / n, lo, hi)].sum() / total)


# ------------------------------------------------------------------------------ errors and intervals


def score_standard_error(n, c, smoothed: bool = False) -> float:
    """Standard error of the avg@k score mean_i(c_i/n_i), problems fixed, samples random:

        SE = sqrt(sum_i s_i^2 / n_i) / P

    s_i^2 is the unbiased per-problem variance p_i(1-p_i) n_i/(n_i-1). A problem with n_i = 1 has none, so
    it gets the pooled per-sample variance p(1-p) N/(N-1) over all N samples (p = sum c / N): an upper
    bound on the mean of p_i(1-p_i), and with every n_i = 1 this is std(outcomes, ddof=1)/sqrt(P), the
    between-problem estimator. With `smoothed`, s_i^2 = p~_i(1-p~_i), p~_i = (c_i+1)/(n_i+2), which stays
    positive at c_i in {0, n_i}: the intervals use it.
    """
    n, c = checked_counts(n, c)
    if smoothed:
        p = _smoothed(n, c)
        s2 = p * (1 - p)
    else:
        total, p = n.sum(), c.sum() / n.sum()
        pooled = p * (1 - p) * total / (total - 1) if total > 1 else 0.0
        s2 = np.where(n > 1, _bernoulli_variance(n, c), pooled)
    return float(np.sqrt(np.sum(s2 / n)) / len(n))


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")


def bootstrap_ci(n, c, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Parametric bootstrap interval for the avg@k score: resample within each problem,
    c*_i ~ Binomial(n_i, p~_i) with the add-one smoothed p~_i = (c_i+1)/(n_i+2) (so 0/n and n/n problems
    still vary), and use the basic bootstrap

        [score - q_{(1+level)/2}(D), score - q_{(1-level)/2}(D)],  D = mean_i(c*_i/n_i) - mean_i(p~_i)

    D is centred on the resampling mean, so the smoothing widens the interval without shifting it.
    Clipped to [0, 1].
    """
    _check_level(level)
    n, c = checked_counts(n, c)
    p = _smoothed(n, c)
    draws = np.random.default_rng(seed).binomial(n, p, size=(resamples, len(n)))
    deviations = (draws / n).mean(axis=1) - p.mean()
    q_low, q_high = np.quantile(deviations, [(1 - level) / 2, (1 + level) / 2])
    score = float(np.mean(c / n))
    return max(0.0, score - float(q_high)), min(1.0, score - float(q_low))


# ----------------------------------------------------------------------------- adaptive allocation


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to `weights` summing to `total` (Hamilton): floor the quotas, then one more
    to the largest fractional parts, ties to the lower index."""
    quotas = total * weights / weights.sum()
    counts = np.floor(quotas).astype(np.int64)
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _neyman_extras(n: np.ndarray, sigma: np.ndarray, budget: int) -> np.ndarray:
    """Real-valued x >= 0 with sum x = budget minimising sum_i sigma_i^2 / (n_i + x_i). KKT: the totals
    n_i + x_i = lam sigma_i on the problems that get samples (water-filling); those are the ones with the
    smallest n_i / sigma_i, and the active prefix is the longest one whose level lam exceeds its threshold.
    """
    thresholds = n / sigma
    order = np.argsort(thresholds, kind="stable")
    levels = (budget + np.cumsum(n[order])) / np.cumsum(sigma[order])
    active = np.nonzero(levels > thresholds[order])[0][-1]
    return np.maximum(0.0, levels[active] * sigma - n)


def allocate(n, c, budget: int, lo: float = 0.1, hi: float = 0.9, floor: int = 0) -> np.ndarray:
    """Extra samples per problem for the next round, summing exactly to `budget`.

    Neyman allocation: Var(mean_i p^_i) = sum_i sigma_i^2 / N_i / P^2 is smallest, for a fixed total of
    samples, when the totals N_i are proportional to sigma_i (Lagrange). With n_i samples already drawn,
    the extras bring the totals n_i + x_i to lam * sigma_i where that needs x_i >= 0 (water-filling; a
    problem already over its share gets none). sigma_i is estimated by sqrt(p~_i(1-p~_i)) with
    p~_i = (c_i+1)/(n_i+2): smoothing keeps a 0/n problem from being written off after a few samples.
    First reserved: `floor` samples for every problem (`AdaptiveState` uses 1), and one for each problem
    with p~_i strictly in (lo, hi) when the budget allows. Rounded to integers by largest remainder.
    """
    n, c = checked_counts(n, c)
    if budget < floor * len(n):
        raise ValueError(f"budget {budget} is below floor {floor} x {len(n)} problems")
    p = _smoothed(n, c)
    reserved = np.full(len(n), floor, dtype=np.int64)
    with_uncertain = np.maximum(reserved, uncertain_mask(p, lo, hi))
    if with_uncertain.sum() <= budget:
        reserved = with_uncertain
    rest = budget - int(reserved.sum())
    if rest == 0:
        return reserved
    return reserved + _largest_remainder(_neyman_extras(n + reserved, np.sqrt(p * (1 - p)), rest), rest)


def adaptive_estimate(rounds: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Exactly unbiased avg@k score from adaptive rounds, rounds[r] = (n_r, c_r) per problem:

        score = mean_i sum_r w_r c_{r,i} / n_{r,i},  w_r = sum_i n_{r,i} / sum_{s,i} n_{s,i}

    Why unbiased: round r's counts n_{r,i} are planned from rounds < r only, so given that past the round
    mean c_{r,i}/n_{r,i} has expectation p_i. The weights w_r are the rounds' shares of the total budget,
    fixed before sampling starts (the schedule fixes each round's budget and `allocate` spends it exactly),
    and sum to 1, so E[sum_r w_r m_{r,i}] = sum_r w_r E[E[m_{r,i} | past]] = p_i (a martingale argument;
    any weights known before their round and summing to 1 would do).
    The pooled mean sum_r c_{r,i} / sum_r n_{r,i} (round means weighted by their planned counts) is not:
    its weight on round r, n_{r,i} / sum_s n_{s,i}, depends on later counts, which depend on round r's
    outcome (a problem that looked solved gets fewer samples later, so its lucky start keeps more weight):
    a bias of order 1/n_i. The price of fixed weights: every problem needs a sample in every round.
    """
    if not rounds:
        raise ValueError("adaptive_estimate needs at least one round")
    counts = [checked_counts(n_r, c_r) for n_r, c_r in rounds]
    budgets = np.array([n_r.sum() for n_r, _ in counts], dtype=float)
    weights = budgets / budgets.sum()
    return float(sum(w * np.mean(c_r / n_r) for w, (n_r, c_r) in zip(weights, counts, strict=True)))


@dataclass
class AdaptiveState:
    """The rounds of one adaptive evaluation: round 0 is a uniform start, each later round is planned by
    `plan` from the rounds before it, with its budget fixed in advance."""

    rounds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def add(self, n_r, c_r) -> None:
        self.rounds.append(checked_counts(n_r, c_r))

    def totals(self) -> tuple[np.ndarray, np.ndarray]:
        return sum(n_r for n_r, _ in self.rounds), sum(c_r for _, c_r in self.rounds)

    def plan(self, budget: int, lo: float = 0.1, hi: float = 0.9) -> np.ndarray:
        return allocate(*self.totals(), budget, lo, hi, floor=1)

    def estimate(self) -> float:
        return adaptive_estimate(self.rounds)
