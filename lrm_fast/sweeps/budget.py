"""Configurations compared at an equal generated-token budget: held-out accuracy against the response
tokens the sampler generated rather than against steps, since a step's cost varies (dynamic sampling
refills a batch, long responses cost more than short ones).

Definitions (per run, then per configuration over its seeds):
- Generated tokens: `rollout/generated_tokens_total` of metrics.jsonl, the response tokens sampled from
  step 1 to that step inclusive, over all ranks and every refill round of dynamic sampling; the stored
  solutions that OSI injects are not generated, so not counted.
- The run's accuracy curve: held-out accuracy (avg@k) at the tokens spent when it was measured: the cold
  start (summary.json) at 0, every periodic evaluation (`eval/accuracy` rows, eval.every) at its step's
  total, the final evaluation (summary.json) at the last step's total. Between two evaluations the
  accuracy is not known; the report takes the last one measured.
- The budget: `--budget TOKENS`, else the baseline configuration's generated tokens over its whole run,
  mean over its seeds (the baseline as lrm_fast/sweeps/headline.py chooses it).
- Accuracy at the budget: the accuracy of the last evaluation at or below the budget. A run that ended
  below the budget is scored by its final evaluation: it spent less.
- The target: the baseline's final held-out accuracy, mean over its seeds. Tokens to the target: the
  tokens of the run's first evaluation, in token order, at or above the target (up to TARGET_SLACK; 0
  where the cold start already is); None where none is. Its mean, min and max are over the seeds that
  reached the target; `reached` counts those seeds, `measured` the seeds with a curve.

Runs from before the token metric (their last step row lacks it) have no curve and None for every
value here; without a single curve in the report there is no budget section (None).
"""

import numpy as np

from lrm_fast.sweeps.runs import Configuration, Run, spread

TOKENS_TOTAL = "rollout/generated_tokens_total"
EVAL_ACCURACY = "eval/accuracy"
# The target is a mean over seeds: a seed that scored exactly that mean may miss it by a rounding error.
TARGET_SLACK = 1e-9

Curve = tuple[np.ndarray, np.ndarray]  # (tokens, accuracy) of a run's evaluations, in step order


def accuracy_curve(run: Run) -> Curve | None:
    """The run's held-out accuracy against its cumulative generated tokens; None without the metric."""
    totals = {row["step"]: row[TOKENS_TOTAL] for row in run.rows if TOKENS_TOTAL in row}
    if not run.rows or run.rows[-1]["step"] not in totals:
        return None
    evals = sorted((row for row in run.eval_rows if row["step"] in totals), key=lambda row: row["step"])
    points = [
        (0.0, run.summary["cold_start_heldout_accuracy"]),
        *((totals[row["step"]], row[EVAL_ACCURACY]) for row in evals),
        (totals[run.rows[-1]["step"]], run.summary["final_heldout_accuracy"]),
    ]
    tokens, accuracy = np.array(points, dtype=np.float64).T
    return tokens, accuracy


def accuracy_at(curve: Curve, tokens: float | np.ndarray) -> float | np.ndarray:
    """The accuracy of the last evaluation at or below `tokens` (NaN below the cold start)."""
    # the totals never decrease; side="right" takes the later of two evaluations at the same total
    index = np.searchsorted(curve[0], tokens, side="right") - 1
    return np.where(index >= 0, curve[1][np.maximum(index, 0)], np.nan)


def tokens_to_reach(curve: Curve, target: float) -> float | None:
    """The tokens of the first evaluation at or above `target`; None if none is."""
    reached = np.flatnonzero(curve[1] >= target - TARGET_SLACK)
    return float(curve[0][reached[0]]) if len(reached) else None


def budget_section(
    configurations: list[Configuration], baseline: int, budget: float | None = None
) -> dict | None:
    """The report's "budget" section (module docstring); None when no run logs generated tokens."""
    curves = [[accuracy_curve(run) for run in c.runs] for c in configurations]
    if all(curve is None for runs in curves for curve in runs):
        return None
    if budget is not None:
        chosen = f"--budget {budget:g}"
    else:
        budget = spread([_total(curve) for curve in curves[baseline]])["mean"]
        chosen = (
            "the baseline's generated tokens over its run, mean over its seeds"
            if budget is not None
            else f"none: the baseline's runs do not log {TOKENS_TOTAL}; pass --budget"
        )
    target = spread([run.summary["final_heldout_accuracy"] for run in configurations[baseline].runs])
    return {
        "tokens": budget,
        "chosen": chosen,
        "baseline": configurations[baseline].label,
        "target_accuracy": target["mean"],
        "configurations": [
            _at_budget(c, runs, budget, target["mean"])
            for c, runs in zip(configurations, curves, strict=True)
        ],
    }


def _at_budget(
    configuration: Configuration, curves: list[Curve | None], budget: float | None, target: float
) -> dict:
    """One configuration's numbers, spread over its seeds (values in seed order, None without a curve)."""
    measured = [curve for curve in curves if curve is not None]
    at_budget = [None if c is None or budget is None else float(accuracy_at(c, budget)) for c in curves]
    to_target = [None if curve is None else tokens_to_reach(curve, target) for curve in curves]
    return {
        "label": configuration.label,
        "seeds": [run.seed for run in configuration.runs],
        "generated_tokens": spread([_total(curve) for curve in curves]),
        "accuracy_at_budget": spread(at_budget),
        "tokens_to_target": spread(to_target),
        "reached": sum(tokens is not None for tokens in to_target),
        "measured": len(measured),  # the seeds that log generated tokens
    }


def _total(curve: Curve | None) -> float | None:
    return None if curve is None else float(curve[0][-1])
