"""The adaptive estimator over a benchmark's stored rounds: its state, interval and variance ratios.

Round r of a benchmark holds (n_r, c_r): samples and correct samples of every problem. The score is the
round means weighted by the rounds' shares of the budget (`stats.adaptive_estimate`), exactly unbiased
for the benchmark mean; see lrm_fast/evaluation/multi_round.py for the protocol.
"""

import numpy as np

from lrm_fast.evaluation.stats import AdaptiveState


def round_counts(entry: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """(n_r, c_r) per round: samples and correct samples of every problem, from the stored samples."""
    num_rounds = 1 + max((s["round"] for p in entry["problems"] for s in p["samples"]), default=-1)
    n = np.zeros((num_rounds, len(entry["problems"])), dtype=np.int64)
    c = np.zeros_like(n)
    for i, problem in enumerate(entry["problems"]):
        for sample in problem["samples"]:
            n[sample["round"], i] += 1
            c[sample["round"], i] += sample["correct"]
    return list(zip(n, c, strict=True))


def state_of(rounds) -> AdaptiveState:
    """The adaptive state of stored (n_r, c_r) rounds."""
    state = AdaptiveState()
    for n_r, c_r in rounds:
        state.add(n_r, c_r)
    return state


def adaptive_variance(state: AdaptiveState, p: np.ndarray) -> float:
    """Variance of P x the adaptive score for per-problem accuracies p: sum_r w_r^2 sum_i p_i(1-p_i)/n_ri,
    with w_r the rounds' budget shares."""
    n, _ = state.totals()
    weights = np.array([n_r.sum() for n_r, _ in state.rounds], dtype=float) / n.sum()
    rounds = zip(weights, state.rounds, strict=True)
    return float(sum(w**2 * np.sum(p * (1 - p) / n_r) for w, (n_r, _) in rounds))


def adaptive_interval(rounds, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict:
    """score (`adaptive_estimate`), its plug-in standard error and a basic parametric bootstrap interval

        [score - q_{(1+level)/2}(D), score - q_{(1-level)/2}(D)],  D = est(c*) - mean_i(p~_i),
        c*_ri ~ Binomial(n_ri, p~_i),  p~_i = (c_i + 1) / (n_i + 2) over all rounds,

    D centred on the resampling mean (every round's mean has expectation p~_i under the resampling).
    The draws are those of `stats.bootstrap_ci`, so one round gives exactly its interval."""
    state = state_of(rounds)
    n, c = state.totals()
    p = (c + 1) / (n + 2)
    variance = adaptive_variance(state, p)
    budgets = np.array([n_r.sum() for n_r, _ in state.rounds], dtype=float)
    rng = np.random.default_rng(seed)
    resampled = sum(
        w * (rng.binomial(n_r, p, size=(resamples, len(p))) / n_r).mean(axis=1)
        for w, (n_r, _) in zip(budgets / budgets.sum(), state.rounds, strict=True)
    )
    q_low, q_high = np.quantile(resampled - p.mean(), [(1 - level) / 2, (1 + level) / 2])
    score = state.estimate()
    return {
        "score": score,
        "standard_error": float(np.sqrt(variance) / len(p)),
        "ci_low": max(0.0, score - float(q_high)),
        "ci_high": min(1.0, score - float(q_low)),
    }


def variance_ratios(rounds) -> dict:
    """Estimated variance of the adaptive score over that of round 0 alone and over that of a uniform
    allocation of the same total budget (below 1: the adaptive rounds helped), None if both are 0.

    All three use the same per-sample variances p^_i(1-p^_i) of the final accuracies p^_i = c_i/n_i:
    the smoothed p~_i of the interval would credit problems solved every time with variance they show no
    sign of, and so hide the gain of sampling them less (on the tiny task's cold start, 300 problems:
    1.03 smoothed, 0.83 unsmoothed; simulating from those accuracies gives 0.84).
    """
    state = state_of(rounds)
    n, c = state.totals()
    s2 = (c / n) * (1 - c / n)
    adaptive = adaptive_variance(state, c / n)
    one_round = np.sum(s2 / state.rounds[0][0])
    uniform = np.sum(s2) / (n.sum() / len(n))
    if uniform == 0:
        return {"variance_ratio_vs_one_round": None, "variance_ratio_vs_uniform": None}
    return {
        "variance_ratio_vs_one_round": float(adaptive / one_round),
        "variance_ratio_vs_uniform": float(adaptive / uniform),
    }
