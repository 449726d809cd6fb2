"""Tests for lrm_fast/eval_variance.py and `lrm-fast-eval-compare`: the variance decomposition, the paired
comparison and the sample planner, on simulated benchmarks whose per-problem accuracies p_i are known.

Simulated checks compare averages over many runs with the truth, within a few of their own standard
errors (or a binomial band for rates); every run is seeded, so a band only has to be honest, not lucky.
"""

import json
import math
import subprocess
import sys
from statistics import NormalDist

import numpy as np
import pytest

from lrm_fast.evaluation.variance import (
    ProblemResults,
    decompose_variance,
    effective_samples,
    paired_comparison,
    paired_power,
    plan_samples,
)

# ------------------------------------------------------------------------------- decomposition


def test_variance_decomposition_hand_computed():
    # a = (0, 1/2, 1) from 4 samples each. s^2 = a(1-a) 4/3 = (0, 1/3, 0); mean s^2/n = (1/12)/3 = 1/36.
    # S^2 = var((0, 1/2, 1), ddof=1) = 1/4, so Var(p) = 1/4 - 1/36 = 2/9, between = 2/9 / 3 = 2/27,
    # within = sum s^2/n / P^2 = (1/12)/9 = 1/108. k* = mean s^2 / (0.1 Var(p)) = (1/9) / (2/90) = 5.
    split = decompose_variance([4, 4, 4], [0, 2, 4])
    assert split.question_variance == pytest.approx(2 / 9)
    assert split.between_variance == pytest.approx(2 / 27)
    assert split.within_variance == pytest.approx(1 / 108)
    assert split.standard_error == pytest.approx(math.sqrt(2 / 27 + 1 / 108))
    assert split.sample_variance == pytest.approx(1 / 9)
    assert split.samples_for_negligible == 5  # exactly 5, although 5.000000000000001 in floating point
    assert split.within_uncertain_share == 1.0  # only the 2/4 problem has sampling variance
    assert split.within_variance_uniform == pytest.approx(split.within_variance)  # already uniform
    assert json.loads(json.dumps(split.as_dict())) == split.as_dict()  # JSON-safe for the summary


def test_variance_with_one_sample_per_problem_counts_everything_as_within():
    # One sample per problem cannot tell question spread from sampling noise: the pooled per-sample
    # variance p(1-p) N/(N-1) equals S^2 exactly, so the between part is 0 and no k makes the split small.
    split = decompose_variance([1] * 6, [1, 0, 1, 1, 0, 0])
    assert split.between_variance == 0.0 and split.samples_for_negligible is None
    assert split.within_variance == pytest.approx(0.5 * 0.5 * 6 / 5 / 6)
    solved = decompose_variance([3, 3], [3, 0])  # no sampling noise at all: one sample per problem is enough
    assert solved.within_variance == 0.0 and solved.samples_for_negligible == 1


def _simulate_splits(true_p, n, runs, rng):
    c = rng.binomial(n, true_p, size=(runs, len(true_p)))
    splits = [decompose_variance(n, c_run) for c_run in c]
    between = np.array([s.between_variance for s in splits])
    within = np.array([s.within_variance for s in splits])
    return c, between, within


def _within_standard_errors(estimates, truth, sigmas=4.0) -> bool:
    return abs(estimates.mean() - truth) <= sigmas * estimates.std(ddof=1) / math.sqrt(len(estimates))


def test_variance_decomposition_recovers_known_components_over_simulated_runs():
    # 60 fixed problems of spread-out difficulty, 2, 4 or 8 samples each, 3000 simulated runs.
    rng = np.random.default_rng(0)
    true_p = rng.beta(0.6, 0.6, size=60)
    n = rng.choice([2, 4, 8], size=60)
    c, between, within = _simulate_splits(true_p, n, 3000, rng)
    true_between = np.var(true_p, ddof=1) / 60  # the estimator's target for fixed problems
    true_within = np.sum(true_p * (1 - true_p) / n) / 60**2
    assert _within_standard_errors(between, true_between)
    assert _within_standard_errors(within, true_within)
    # Without subtracting the sampling noise the between part is far off (here by over 100 SE).
    naive = np.var(c / n, axis=1, ddof=1) / 60
    assert not _within_standard_errors(naive, true_between, sigmas=20)
    # With the problems fixed, the scores' spread over runs is the within part alone: the sample
    # variance of 3000 near-normal scores has relative standard error sqrt(2/2999) = 2.6%; 4 of them.
    score_variance = np.var(np.mean(c / n, axis=1), ddof=1)
    assert score_variance == pytest.approx(true_within, rel=4 * math.sqrt(2 / 2999))


def test_variance_components_add_up_when_questions_are_redrawn():
    # Every run draws 40 new questions from Beta(0.6, 0.6) (variance 0.25 / 2.2) and 4 samples of each:
    # the score's variance over runs is then between + within, and the between estimate is unbiased
    # for the population's Var(p) / P.
    rng = np.random.default_rng(1)
    runs, num_problems, k = 2000, 40, 4
    population_variance = 0.25 / 2.2
    true_p = rng.beta(0.6, 0.6, size=(runs, num_problems))
    c = rng.binomial(k, true_p)
    n = np.full(num_problems, k)
    splits = [decompose_variance(n, c_run) for c_run in c]
    between = np.array([s.between_variance for s in splits])
    total = np.array([s.between_variance + s.within_variance for s in splits])
    assert _within_standard_errors(between, population_variance / num_problems)
    true_total = (population_variance + (0.25 - population_variance) / k) / num_problems
    assert _within_standard_errors(total, true_total)
    score_variance = np.var(np.mean(c / k, axis=1), ddof=1)
    assert score_variance == pytest.approx(true_total, rel=4 * math.sqrt(2 / (runs - 1)))


def test_variance_effective_samples_of_adaptive_rounds_match_the_round_loop_formula():
    from lrm_fast.evaluation.adaptive import adaptive_variance, state_of

    rng = np.random.default_rng(2)
    true_p = rng.uniform(0, 1, size=12)
    rounds = []
    for n_r in (np.full(12, 4), rng.integers(1, 9, size=12), rng.integers(1, 5, size=12)):
        rounds.append((n_r, rng.binomial(n_r, true_p)))
    n_eff = effective_samples(rounds)
    p = rng.uniform(0, 1, size=12)
    assert np.sum(p * (1 - p) / n_eff) == pytest.approx(adaptive_variance(state_of(rounds), p))
    assert (n_eff <= sum(n_r for n_r, _ in rounds) + 1e-9).all()  # fixed weights cost samples
    assert np.array_equal(effective_samples(rounds[:1]), rounds[0][0])  # one round: plain counts


# --------------------------------------------------------------------------------- paired test


def test_paired_comparison_hand_computed():
    # a = (0, 1/2, 1, 1/4), b = (1/2, 1/2, 3/4, 1): d = (1/2, 0, -1/4, 3/4), mean 1/4.
    # Deviations (1/4, -1/4, -1/2, 1/2): std = sqrt(0.625 / 3), SE = std / 2 = 0.2282.
    a = ProblemResults(("q0", "q1", "q2", "q3"), [4, 4, 4, 4], [0, 2, 4, 1])
    b = ProblemResults(("q0", "q1", "q2", "q3"), [4, 4, 4, 4], [2, 2, 3, 4])
    result = paired_comparison(a, b, level=0.9)
    se = math.sqrt(0.625 / 3) / 2
    assert result.difference == pytest.approx(0.25) and result.standard_error == pytest.approx(se)
    z = NormalDist().inv_cdf(0.95)
    assert (result.ci_low, result.ci_high) == pytest.approx((0.25 - z * se, 0.25 + z * se))
    assert result.p_value == pytest.approx(2 * NormalDist().cdf(-0.25 / se))
    assert (result.b_better, result.b_worse, result.ties) == (2, 1, 1)
    assert result.gained == ["q0", "q3"] and result.lost == []  # q2 stays above 1/2 (1 -> 3/4)
    # Sampling only: s^2 = a(1-a) 4/3 summed over both models, / 4 samples, sqrt, / P.
    s2 = [0, 1 / 3, 0, 0.25, 1 / 3, 1 / 3, 0.25, 0]  # A's four problems, then B's
    assert result.sampling_standard_error == pytest.approx(math.sqrt(sum(s2) / 4) / 4)
    same = paired_comparison(a, a)
    assert (same.difference, same.standard_error, same.p_value) == (0.0, 0.0, 1.0)


def test_paired_comparison_refuses_different_problems():
    a = ProblemResults(("p0", "p1", "p2"), [2, 2, 2], [1, 1, 1])
    other = ProblemResults(("p0", "x1", "p2"), [2, 2, 2], [1, 1, 1])
    with pytest.raises(ValueError, match=r"A: 3, B: 3 problems.*position 1, A has 'p1', B has 'x1'"):
        paired_comparison(a, other)
    shorter = ProblemResults(("p0", "p1"), [2, 2], [1, 1])
    with pytest.raises(ValueError, match=r"A: 3, B: 2 problems.*position 2, A has 'p2', B has None"):
        paired_comparison(a, shorter)


def _rejection_rate(true_a, true_b, k, trials, rng, alpha=0.05) -> float:
    n = np.full(len(true_a), k)
    rejected = 0
    for _ in range(trials):
        a = ProblemResults.of(n, rng.binomial(n, true_a))
        b = ProblemResults.of(n, rng.binomial(n, true_b))
        rejected += paired_comparison(a, b, level=1 - alpha).p_value < alpha
    return rejected / trials


def test_paired_test_holds_its_false_positive_rate_for_the_same_model():
    # A and B are the same model (same p_i) on 100 problems, 4 samples each, mixed certain and uncertain.
    rng = np.random.default_rng(3)
    true_p = np.concatenate([np.zeros(20), np.ones(10), rng.uniform(0.05, 0.95, 70)])
    rate = _rejection_rate(true_p, true_p, k=4, trials=1000, rng=rng)
    # 1000 tests at alpha 0.05: binomial SD sqrt(0.05 * 0.95 / 1000) = 0.007. The normal approximation
    # of the estimated SE adds about 0.003 at 100 problems. Band: 0.05 - 4 SD to 0.053 + 4 SD.
    assert 0.022 <= rate <= 0.081


def test_paired_test_detects_a_known_difference_at_the_planned_power():
    # B is A + 0.08 on every problem (the planner's assumption); 80 problems, pilot of 32 samples of A.
    rng = np.random.default_rng(4)
    delta, num_problems = 0.08, 80
    true_a = rng.uniform(0.2, 0.7, num_problems)
    pilot_n = np.full(num_problems, 32)
    (row,) = plan_samples(pilot_n, rng.binomial(pilot_n, true_a), delta, problems=num_problems)
    k = row["samples_per_problem"]
    assert row["power"] >= 0.8  # the smallest k that reaches the target ...
    assert paired_power(delta, row["standard_error"] * math.sqrt(k / (k - 1))) < 0.8  # ... k - 1 does not
    rate = _rejection_rate(true_a, true_a + delta, k, trials=1000, rng=rng)
    # 1000 tests at power ~0.85: binomial SD 0.011; the pilot's variance estimate (2560 samples), B's
    # slightly smaller p(1-p) and the normal approximation add up to about 0.02. Band: 4 SD + 0.02.
    assert abs(rate - row["power"]) <= 0.065


def test_plan_samples_power_table_over_problem_counts():
    rng = np.random.default_rng(5)
    pilot_n = np.full(40, 8)
    pilot_c = rng.binomial(pilot_n, rng.uniform(0.1, 0.9, 40))
    rows = plan_samples(pilot_n, pilot_c, 0.05, power=0.9, alpha=0.01)
    assert [row["problems"] for row in rows] == [20, 40, 80, 160]
    samples = [row["samples_per_problem"] for row in rows]
    assert samples == sorted(samples, reverse=True) and samples[0] > samples[-1]
    assert all(row["power"] >= 0.9 for row in rows)
    # Hand check of one row: k = ceil(2 s^2 / (P SE^2)), SE = 0.05 / (z_0.995 + z_0.9).
    s2 = decompose_variance(pilot_n, pilot_c).sample_variance
    target = 0.05 / (NormalDist().inv_cdf(0.995) + NormalDist().inv_cdf(0.9))
    assert rows[1]["samples_per_problem"] == math.ceil(2 * s2 / (40 * target**2))
    # If the difference varies across questions as much as the questions' accuracy does, no number of
    # samples of 20 questions gets there: the row says so and reports the limit's power.
    (hopeless,) = plan_samples(pilot_n, pilot_c, 0.05, problems=20, between_fraction=1.0)
    assert hopeless["samples_per_problem"] is None and hopeless["power"] < 0.8
    with pytest.raises(ValueError, match="difference must be non-zero"):
        plan_samples(pilot_n, pilot_c, 0.0)


# ------------------------------------------------------------------------- lrm-fast-eval-compare


class DigitTokenizer:
    """Decodes a one-token response [x] to "\\boxed{x}": all that grading needs, without a vocabulary."""

    def batch_decode(self, ids, skip_special_tokens=True):
        return [f"\\boxed{{{row[0]}}}" for row in ids]


class ScriptedBackend:
    """Prompt [i] is answered correctly (token = its answer, else answer + 1) with probability true_p[i]."""

    def __init__(self, answers, true_p):
        self.answers, self.true_p = answers, true_p

    def generate(self, prompts, group_size, params):
        from lrm_fast.rollout import Rollout

        rng = np.random.default_rng(params.seed)
        rollouts = []
        for (i,) in prompts:
            for _ in range(group_size):
                token = self.answers[i] + (rng.random() >= self.true_p[i])
                rollouts.append(Rollout([i], [token], [0.0], finished=True))
        return rollouts


def _write_run(path, true_p, ids):
    from lrm_fast.config import EvalProtocol
    from lrm_fast.data.examples import PromptExample
    from lrm_fast.evaluation.multi_round import evaluate

    answers = [10 + i for i in range(len(true_p))]
    examples = [PromptExample(id=i, problem=i, answer=str(x)) for i, x in zip(ids, answers, strict=True)]
    settings = EvalProtocol(samples_per_problem=6, max_new_tokens=4, greedy=False, max_rounds=2)
    prompts = [[i] for i in range(len(true_p))]
    backend = ScriptedBackend(answers, true_p)
    return evaluate(backend, DigitTokenizer(), examples, prompts, settings, path, name="toy", seed=7)


def _compare(*args):
    command = [sys.executable, "-m", "lrm_fast.cli.eval_compare", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_paired_compare_cli_end_to_end_on_two_evaluations(tmp_path):
    from lrm_fast.cli.eval_compare import RUN_FORMAT, load_results
    from lrm_fast.evaluation.multi_round import RUN_FORMAT as STORED_FORMAT
    from lrm_fast.evaluation.report import format_table

    assert RUN_FORMAT == STORED_FORMAT  # the CLI's copy of the constant (it avoids importing torch)
    ids = [f"p{i}" for i in range(12)]
    true_a = [0.0, 0.0, 1.0, 1.0, 0.2, 0.3, 0.4, 0.5, 0.5, 0.6, 0.7, 0.8]
    true_b = [0.0, 0.6, 1.0, 1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    summary = _write_run(tmp_path / "a.json", true_a, ids)
    _write_run(tmp_path / "b.json", true_b, ids)
    _write_run(tmp_path / "other.json", true_b, [*ids[:5], "q5", *ids[6:]])

    split = summary["variance_decomposition"]  # in the run file's summary and in the table
    # Neyman allocation put round 1 where the noise was: less sampling variance than a uniform spread.
    assert 0 < split["within_variance"] < split["within_variance_uniform"]
    assert "SEq" in format_table({"toy": summary}).splitlines()[0]

    result = _compare(tmp_path / "a.json", tmp_path / "b.json", "--difference", "0.1", "--alpha", "0.1")
    assert result.returncode == 0, result.stderr
    expected = paired_comparison(
        load_results(tmp_path / "a.json")["toy"], load_results(tmp_path / "b.json")["toy"], 0.9
    )
    assert (
        f"difference {100 * expected.difference:+.2f} +- {100 * expected.standard_error:.2f}" in result.stdout
    )
    assert f"90% CI [{100 * expected.ci_low:+.2f}, {100 * expected.ci_high:+.2f}]" in result.stdout
    assert f"B gains {len(expected.gained)} (" in result.stdout and expected.difference > 0
    assert "problems  samples/problem  SE" in result.stdout
    assert len(result.stdout.splitlines()) == 5 + 4  # four summary lines, header, four planner rows

    mismatch = _compare(tmp_path / "a.json", tmp_path / "other.json")
    assert mismatch.returncode == 1
    assert "position 5, A has 'p5', B has 'q5'" in mismatch.stderr and "'toy'" in mismatch.stderr
