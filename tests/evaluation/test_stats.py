"""Tests for the evaluation statistics: pass@k, maj@k, uncertain problems, intervals, adaptive allocation."""

import itertools
import math
from collections import Counter
from fractions import Fraction
from statistics import NormalDist

import numpy as np
import pytest

from lrm_fast.evaluation.stats import (
    AdaptiveState,
    adaptive_estimate,
    allocate,
    bootstrap_ci,
    maj_at_k,
    maj_at_k_curve,
    pass_at_k,
    pass_at_k_curve,
    score_standard_error,
    uncertain_mask,
    variance_share,
)

# --------------------------------------------------------------------------------------------- pass@k


def normal_ci(n, c, level: float = 0.95) -> tuple[float, float]:
    """The textbook interval score +- z * SE (smoothed SE), the baseline the bootstrap is checked beside."""
    n, c = np.asarray(n), np.asarray(c)
    score = float(np.mean(c / n))
    half_width = NormalDist().inv_cdf((1 + level) / 2) * score_standard_error(n, c, smoothed=True)
    return max(0.0, score - half_width), min(1.0, score + half_width)


def _equal_split(total: int, parts: int) -> np.ndarray:
    """`total` in `parts` integers as equal as possible, the remainder to the first ones."""
    return np.full(parts, total // parts) + (np.arange(parts) < total % parts)


def simulate_adaptive_vs_uniform(true_p, budget: int, initial: int, rounds: int, trials: int, seed=0) -> dict:
    """A benchmark with known per-problem accuracies `true_p` and `budget` samples in total: uniform
    (budget / P per problem) against adaptive (`initial` per problem, then the rest over `rounds` equal
    rounds planned by `AdaptiveState.plan`). Empirical variance and bias of each score over `trials` runs,
    of round 0 alone, and of the pooled adaptive mean sum c / sum n per problem."""
    true_p = np.asarray(true_p, dtype=float)
    round_budgets = _equal_split(budget - initial * len(true_p), rounds)
    uniform_n = _equal_split(budget, len(true_p))
    rng = np.random.default_rng(seed)
    scores = {"uniform": [], "adaptive": [], "adaptive_pooled": [], "one_round": []}
    for _ in range(trials):
        scores["uniform"].append(np.mean(rng.binomial(uniform_n, true_p) / uniform_n))
        state = AdaptiveState()
        n_0 = np.full(len(true_p), initial)
        state.add(n_0, rng.binomial(n_0, true_p))
        for round_budget in round_budgets:
            n_r = state.plan(int(round_budget))
            state.add(n_r, rng.binomial(n_r, true_p))
        n, c = state.totals()
        scores["adaptive"].append(state.estimate())
        scores["adaptive_pooled"].append(np.mean(c / n))
        scores["one_round"].append(np.mean(state.rounds[0][1] / initial))
    out = {"trials": trials}
    for name, values in scores.items():
        out[f"variance_{name}"] = float(np.var(values, ddof=1))
        out[f"bias_{name}"] = float(np.mean(values)) - float(true_p.mean())
    out["variance_ratio"] = out["variance_adaptive"] / out["variance_uniform"]
    return out


def closed_form_pass_at_k(n, c, k):
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


@pytest.mark.parametrize(
    ("n", "c"),
    [
        pytest.param(16, 3, id="small"),
        pytest.param(64, 1, id="aime-k64-one-correct"),
        pytest.param(64, 32, id="aime-k64-half"),  # C(64, 32) ~ 1.8e18: the binomials overflow float64 ratios
        pytest.param(200, 7, id="large-n"),
    ],
)
def test_pass_at_k_matches_closed_form(n, c):
    for k in range(1, n + 1):
        assert pass_at_k(n, c, k) == pytest.approx(closed_form_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_matches_enumeration_of_subsets():
    # pass@k is the chance that a uniformly drawn k-subset of the n samples holds a correct one.
    for n in range(1, 8):
        for c in range(n + 1):
            outcomes = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                expected = sum(any(subset) for subset in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_edge_cases():
    assert pass_at_k(16, 0, 1) == 0.0
    assert pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 16, 1) == 1.0
    assert pass_at_k(16, 1, 16) == 1.0  # k = n: some sample is correct
    assert pass_at_k(16, 5, 1) == pytest.approx(5 / 16)  # k = 1 is the accuracy
    assert pass_at_k(1, 1, 1) == 1.0


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [
        pytest.param(8, 2, 0, id="k-zero"),
        pytest.param(8, 2, 9, id="k-above-n"),
        pytest.param(8, 9, 1, id="c-above-n"),
        pytest.param(8, -1, 1, id="negative-c"),
    ],
)
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass@k needs"):
        pass_at_k(n, c, k)


def test_pass_at_k_curve_with_different_sample_counts():
    n, c = [8, 5, 12, 5], [0, 5, 3, 2]
    curve = pass_at_k_curve(n, c)
    assert len(curve) == 5  # up to the smallest n
    for k in range(1, 6):
        expected = np.mean([closed_form_pass_at_k(n_i, c_i, k) for n_i, c_i in zip(n, c, strict=True)])
        assert curve[k - 1] == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------------------------- maj@k


def test_maj_at_k_hand_cases_with_ties_and_missing_answers():
    # Five samples 4 5 5 4 4 ("4" correct), read as five cyclic windows: 45544 55444 54445 44455 44554.
    # k=1: first answers 4 5 5 4 4, 3/5 right (= pass@1). k=2: 45 (tie, 4 first) 55 54 (tie, 5 first)
    # 44 44 -> 3/5. k=3: 455 554 544 444 445 -> 3/5. k=4: 4554 (tie, 4) 5544 (tie, 5) 5444 4445 4455
    # (tie, 4) -> 4/5. k=5: 4 leads 3-2 in every window -> 1.
    ties = [("4", True), ("5", False), ("5", False), ("4", True), ("4", True)]
    assert maj_at_k_curve([ties]) == pytest.approx([0.6, 0.6, 0.6, 0.8, 1.0])
    # Only None counts as wrong; one real answer then beats any number of Nones. Windows: NN7 N7N 7NN.
    missing = [(None, False), (None, False), ("7", True)]
    assert maj_at_k_curve([missing]) == pytest.approx([1 / 3, 2 / 3, 1.0])
    # Together: the curve stops at the smallest sample count (3) and averages over problems.
    assert maj_at_k_curve([ties, missing]) == pytest.approx([(0.6 + 1 / 3) / 2, (0.6 + 2 / 3) / 2, 0.8])
    assert maj_at_k([ties], 4) == pytest.approx(0.8)


def brute_force_majority(votes, k):
    """Majority correctness of the first k votes, averaged over every cyclic rotation."""
    outcomes = []
    for r in range(len(votes)):
        prefix = (votes[r:] + votes[:r])[:k]
        counts = Counter(key for key, _ in prefix if key is not None)
        if not counts:
            outcomes.append(False)
            continue
        best = max(counts.values())
        first_best = next(key for key, _ in prefix if key is not None and counts[key] == best)
        outcomes.append(next(correct for key, correct in prefix if key == first_best))
    return np.mean(outcomes)


def test_maj_at_k_matches_brute_force_on_random_votes():
    rng = np.random.default_rng(0)
    keys = ["a", "b", "c", None]
    problems = []
    for _ in range(50):
        gold = rng.choice(3)
        drawn = rng.choice(4, size=rng.integers(3, 12), p=[0.3, 0.3, 0.2, 0.2])
        problems.append([(keys[i], bool(i == gold)) for i in drawn])
    curve = maj_at_k_curve(problems)
    for k in range(1, len(curve) + 1):
        assert curve[k - 1] == pytest.approx(np.mean([brute_force_majority(v, k) for v in problems]))
    # maj@1 is the mean correctness of all samples: pass@1 on the same samples.
    n = [len(votes) for votes in problems]
    c = [sum(correct for _, correct in votes) for votes in problems]
    assert curve[0] == pytest.approx(pass_at_k_curve(n, c)[0], abs=1e-12)


def test_maj_at_k_rejects_k_above_smallest_sample_count():
    with pytest.raises(ValueError, match="maj@k needs"):
        maj_at_k([[("1", True)] * 3, [("1", True)] * 2], 3)


# ---------------------------------------------------------------------------------- uncertain problems


def test_uncertain_mask_boundaries_are_exclusive():
    acc = [0.0, 0.1, 0.1 + 1e-9, 0.5, 0.9 - 1e-9, 0.9, 1.0]
    assert uncertain_mask(acc).tolist() == [False, False, True, True, True, False, False]
    assert uncertain_mask([0.25, 0.75], lo=0.25, hi=0.75).tolist() == [False, False]


def test_uncertain_variance_share_hand_computed():
    # p = [1/2, 3/10, 19/20, 1]; s^2 = p(1-p) n/(n-1) = [1/3, 7/30, 1/20, 0];
    # s^2/n = [1/12, 7/300, 1/400, 0] = [2500, 700, 75, 0] / 30000.
    # Uncertain (0.1 < p < 0.9): the first two, share = 3200 / 3275 = 128/131.
    n, c = [4, 10, 20, 1], [2, 3, 19, 1]
    assert variance_share(n, c) == pytest.approx(128 / 131, abs=1e-12)
    # Widening the band to (0.1, 0.99) takes in p = 19/20 as well.
    assert variance_share(n, c, hi=0.99) == pytest.approx(1.0)
    assert variance_share([8, 8], [0, 8]) == 0.0  # no variance at all


# --------------------------------------------------------------------------------- errors, intervals


def test_standard_error_hand_computed():
    # s^2/n = [1/12, 7/300] (as above), sum = 8/75; two problems -> SE = sqrt(8/75) / 2.
    assert score_standard_error([4, 10], [2, 3]) == pytest.approx(math.sqrt(8 / 75) / 2, abs=1e-12)
    # Smoothed: p~ = [3/6, 4/12], p~(1-p~)/n = [1/16, 2/90].
    smoothed = math.sqrt(1 / 16 + 2 / 90) / 2
    assert score_standard_error([4, 10], [2, 3], smoothed=True) == pytest.approx(smoothed, abs=1e-12)


def test_standard_error_one_sample_per_problem_falls_back_to_between_problem_std():
    outcomes = np.array([1, 0, 0, 1, 1, 1, 0, 1, 1, 0])
    expected = np.std(outcomes, ddof=1) / math.sqrt(len(outcomes))
    assert score_standard_error(np.ones(10), outcomes) == pytest.approx(expected, abs=1e-12)


def test_ci_all_solved_benchmark_has_width_only_from_smoothing():
    n, c = np.full(30, 16), np.full(30, 16)
    assert score_standard_error(n, c) == 0.0
    for low, high in (normal_ci(n, c), bootstrap_ci(n, c, resamples=500)):
        assert low < 1.0 and high == 1.0


def test_ci_coverage_on_simulated_benchmarks():
    # 30 problems x 16 samples, AIME-sized: 4 never solved, 4 always solved, 22 uncertain p in [0.15, 0.85].
    true_p = np.concatenate([np.zeros(4), np.ones(4), np.linspace(0.15, 0.85, 22)])
    true_score, n, runs = true_p.mean(), np.full(30, 16), 400
    rng = np.random.default_rng(7)
    hits = Counter()
    for run in range(runs):
        c = rng.binomial(n, true_p)
        low, high = bootstrap_ci(n, c, resamples=500, seed=run)  # 500 resamples: endpoints within ~0.2 SE
        hits["bootstrap"] += low <= true_score <= high
        low, high = normal_ci(n, c)
        hits["normal"] += low <= true_score <= high
        # The same normal interval 30% too narrow: the band below must reject it.
        half = 0.7 * (high - low) / 2
        hits["too_narrow"] += abs((low + high) / 2 - true_score) <= half
    # With 95% coverage the hit count is Binomial(400, 0.95): SE 0.011. The band is 0.95 +- 3.5 SE
    # (a false failure ~5e-4), which still rejects a 30% too narrow interval (coverage ~0.85). The
    # smoothing makes the intervals a little conservative (0.952 and 0.957 in 4000 runs), well inside.
    se = math.sqrt(0.95 * 0.05 / runs)
    low_band, high_band = 0.95 - 3.5 * se, 0.95 + 3.5 * se
    assert low_band <= hits["bootstrap"] / runs <= high_band
    assert low_band <= hits["normal"] / runs <= high_band
    assert hits["too_narrow"] / runs < low_band


def test_ci_is_deterministic_and_contains_score():
    n, c = np.full(30, 16), np.arange(30) % 17
    assert bootstrap_ci(n, c, seed=3) == bootstrap_ci(n, c, seed=3)
    score = np.mean(c / n)
    for low, high in (normal_ci(n, c), bootstrap_ci(n, c, resamples=500)):
        assert low < score < high


# ---------------------------------------------------------------------------------- adaptive sampling


@pytest.mark.parametrize("budget", [0, 1, 7, 40, 1000])
@pytest.mark.parametrize("floor", [0, 1])
def test_adaptive_allocation_sums_to_budget(budget, floor):
    n = np.array([4, 4, 8, 8, 16, 4, 4, 12, 4, 4])
    c = np.array([0, 4, 2, 7, 8, 1, 3, 0, 2, 4])
    if budget < floor * len(n):
        with pytest.raises(ValueError, match="below floor"):
            allocate(n, c, budget, floor=floor)
        return
    extra = allocate(n, c, budget, floor=floor)
    assert extra.sum() == budget and (extra >= floor).all()
    p_smooth = (c + 1) / (n + 2)
    if uncertain_mask(p_smooth).sum() <= budget:
        assert (extra[uncertain_mask(p_smooth)] >= 1).all()


def test_adaptive_allocation_is_neyman_on_totals():
    # Large budget, nobody over their share: totals n + extra proportional to sqrt(p~(1-p~)), to rounding.
    n, c = np.array([4, 4, 8, 10]), np.array([0, 2, 4, 1])
    extra = allocate(n, c, 10_000)
    p_smooth = (c + 1) / (n + 2)
    sigma = np.sqrt(p_smooth * (1 - p_smooth))
    target = sigma / sigma.sum() * (n.sum() + 10_000)
    assert np.abs(n + extra - target).max() <= 1.0
    # Small budget: a problem already sampled far beyond its share gets nothing.
    assert allocate(np.array([4, 400]), np.array([2, 1]), 10, lo=0.4, hi=0.6)[1] == 0


def test_adaptive_estimate_hand_computed():
    # Round budgets 4 and 12 -> weights 1/4, 3/4. Problem means: (1/2)/4 + (7/10)*3/4 = 0.65 and
    # (0/2)/4 + (2/2)*3/4 = 0.75; score 0.7. The pooled mean would say (8/12 + 2/4)/2 = 7/12.
    rounds = [(np.array([2, 2]), np.array([1, 0])), (np.array([10, 2]), np.array([7, 2]))]
    assert adaptive_estimate(rounds) == pytest.approx(0.7, abs=1e-12)
    with pytest.raises(ValueError, match="n_i >= 1"):
        adaptive_estimate([(np.array([2, 0]), np.array([1, 0]))])  # a problem skipped in a round


def test_adaptive_beats_uniform_at_equal_budget():
    # 40 problems: 20 certain (12 never, 8 always solved), 20 uncertain p in [0.3, 0.7]; 32 samples each.
    true_p = np.concatenate([np.zeros(12), np.ones(8), np.linspace(0.3, 0.7, 20)])
    result = simulate_adaptive_vs_uniform(true_p, budget=32 * 40, initial=4, rounds=3, trials=2000, seed=1)
    one_round = result["variance_one_round"] / result["variance_uniform"]
    ratio = result["variance_ratio"]
    print(f"\nvariance adaptive / uniform = {ratio:.3f}, one round of 4 / uniform = {one_round:.2f}")
    # Each variance is estimated to ~3% (sqrt(2/2000)), the ratio to ~5%: 0.9 is a margin of 2+ SE.
    assert result["variance_ratio"] < 0.9
    for name in ("uniform", "adaptive"):
        standard_error = math.sqrt(result[f"variance_{name}"] / result["trials"])
        assert abs(result[f"bias_{name}"]) < 4 * standard_error, name


def test_adaptive_estimate_is_unbiased_where_pooled_mean_is_not():
    # All problems at p = 0.2: one that starts 0/4 looks solved-wrong and gets fewer later samples, so its
    # unlucky start keeps more weight in the pooled mean (bias ~ -0.013 here, 30 SE); fixed weights do not.
    true_p = np.full(30, 0.2)
    result = simulate_adaptive_vs_uniform(true_p, budget=16 * 30, initial=4, rounds=3, trials=1000, seed=2)
    assert abs(result["bias_adaptive"]) < 4 * math.sqrt(result["variance_adaptive"] / 1000)
    assert abs(result["bias_adaptive_pooled"]) > 10 * math.sqrt(result["variance_adaptive_pooled"] / 1000)


def test_adaptive_state_plans_from_accumulated_rounds():
    state = AdaptiveState()
    state.add([4, 4, 4], [0, 2, 4])
    extra = state.plan(9)
    assert extra.sum() == 9 and (extra >= 1).all() and extra[1] == extra.max()
    state.add(extra, np.minimum(extra, [0, 3, 9]))
    n, c = state.totals()
    assert n.tolist() == (4 + extra).tolist() and c.tolist() == [0, 2 + min(extra[1], 3), 4 + extra[2]]
    assert state.estimate() == adaptive_estimate(state.rounds)
