"""The study's headline quantities (PAPER.md §7: zero-advantage ratio -42%, inference efficiency +27%,
evaluation variance -60%; circulating, unconfirmed), each against its baseline, with a spread over seeds.

Per configuration:
- Δ zero-adv: relative change of the zero-advantage ratio (mean over the training steps, after RLR and
  OSI) against the baseline configuration's.
- Δ len correct: relative change of the mean length of correct responses over the last EDGE_SHARE of the
  steps against the baseline configuration's (negative: shorter answers, the efficiency figure).
- sampled length: mean length of all sampled responses over the last EDGE_SHARE of the steps, in tokens,
  the number behind the efficiency figure.
- Δ eval variance: the sampling variance of the final evaluation's score with all its rounds against
  that of its round 0 alone, Var_k / Var_1 - 1, from the per-problem samples: the within-question part of
  lrm_fast/evaluation/variance.py, sum_i s_i^2 / n_i / P^2, with s_i^2 from every round's samples in both
  (so only the sample counts differ) and the adaptive rounds' effective n_i. Its baseline is the
  one-round evaluation of the same model, not another configuration; "-" where the evaluation had one
  round (lrm_fast/sweeps/runs.py says which evaluation file is used).

Relative changes are taken per seed, x_s / y_s - 1, against the baseline's run of the same seed, or,
for a seed the baseline lacks, against the baseline's mean over its seeds; the spread is the mean,
sample std, min and max of those per-seed changes.

The baseline configuration: the one `--baseline` names (a run or sweep directory whose runs all belong
to one configuration, or a configuration's label); else the configuration without overrides of its own
(everything it sets, every configuration sets: the sweep's defaults); else the first in job order
(Hydra's multirun puts the first value of each swept key first, so `reward=binary,rlr` makes binary the
baseline).
"""

from pathlib import Path

import numpy as np

from lrm_fast.evaluation.adaptive import round_counts
from lrm_fast.evaluation.variance import decompose_variance, effective_samples
from lrm_fast.sweeps.runs import Configuration, spread

# Report quantity -> the per-run number (lrm_fast.sweeps.runs.run_numbers) it is a relative change of.
CHANGES = {"zero_adv_change": "zero_adv_ratio", "length_correct_change": "length_correct_last"}


def eval_variance_change(entry: dict | None) -> float | None:
    """Var_k / Var_1 - 1 of an evaluation entry's score (module docstring); None with one round or none."""
    if entry is None:
        return None
    rounds = round_counts(entry)
    if len(rounds) < 2:
        return None
    n, c = sum(n_r for n_r, _ in rounds), sum(c_r for _, c_r in rounds)
    one_round = decompose_variance(n, c, effective_n=rounds[0][0]).within_variance
    all_rounds = decompose_variance(n, c, effective_n=effective_samples(rounds)).within_variance
    return all_rounds / one_round - 1 if one_round > 0 else None


def choose_baseline(
    configurations: list[Configuration], baseline: str | Path | None = None
) -> tuple[int, str]:
    """(index of the baseline configuration, why it is the baseline); see the module docstring."""
    if baseline is not None:
        return _named_baseline(configurations, baseline), f"--baseline {baseline}"
    shared = set.intersection(*(set(c.overrides) for c in configurations))
    for index, configuration in enumerate(configurations):
        if set(configuration.overrides) == shared:
            return index, "the configuration without overrides of its own"
    return 0, "the first configuration in job order"


def _named_baseline(configurations: list[Configuration], baseline: str | Path) -> int:
    path = Path(baseline)
    if path.exists():
        path = path.resolve()
        found = {
            index
            for index, c in enumerate(configurations)
            for run in c.runs
            if run.path == path or path in run.path.parents
        }
        if len(found) != 1:
            raise ValueError(
                f"--baseline {baseline}: its runs must belong to one configuration, found {len(found)}"
            )
        return found.pop()
    labels = [c.label for c in configurations]
    if str(baseline) not in labels:
        raise ValueError(f"--baseline {baseline!r}: neither a run directory nor a configuration of {labels}")
    return labels.index(str(baseline))


def relative_changes(
    values: dict[int, float | None], baseline: dict[int, float | None]
) -> list[float | None]:
    """x_s / y_s - 1 per seed s of `values`, y_s the baseline's value of seed s, else its seed mean."""
    finite = [v for v in baseline.values() if v is not None]
    fallback = float(np.mean(finite)) if finite else None
    changes = []
    for seed, value in values.items():
        reference = baseline.get(seed) if baseline.get(seed) is not None else fallback
        changes.append(None if value is None or not reference else value / reference - 1)
    return changes


def headline(configurations: list[Configuration], numbers: list[list[dict]], baseline: int) -> list[dict]:
    """The quantities of every configuration; `numbers[j]` are the per-run numbers of configuration j's
    runs (in run order)."""
    seeds = [[run.seed for run in c.runs] for c in configurations]
    rows = []
    for j, configuration in enumerate(configurations):
        row = {"label": configuration.label, "seeds": seeds[j], "baseline": j == baseline}
        for name, key in CHANGES.items():
            own = dict(zip(seeds[j], (n[key] for n in numbers[j]), strict=True))
            base = dict(zip(seeds[baseline], (n[key] for n in numbers[baseline]), strict=True))
            row[key] = spread(list(own.values()))
            row[name] = spread(relative_changes(own, base))
        for key in ("length_sampled_last", "eval_variance_change", "eval_rounds"):
            row[key] = spread([n[key] for n in numbers[j]])
        rows.append(row)
    return rows
