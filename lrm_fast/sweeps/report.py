"""Sweep reports (`lrm-fast-report`): configurations of `lrm-fast-train` runs compared over seeds.

A run is any directory under the given paths that holds metrics.jsonl (a Hydra multirun directory, one of
its numbered jobs, a single run, or a folder of those). Its configuration is its command-line overrides
(.hydra/overrides.yaml) minus the keys in IGNORED_KEYS (the seed, and keys that do not change what is
trained); runs with the same configuration are the seeds of it.

Per configuration, over its seeds (mean, sample std, min, max):
- final held-out avg@k, cold-start avg@k and the improvement in points (summary.json);
- the final evaluation's pass@k curve (eval/final.json, round 0), mean over seeds;
- zero-advantage ratio and its all-correct / all-wrong parts, mean over training steps, as the update saw
  them (after RLR and OSI; the `_before` metrics are not reported);
- mean length of correct and of incorrect responses over the first and the last 10% of the steps;
- clip fraction, approx KL (to the rollout policy) and ref KL (to the reference), means over steps;
- wall time of the GRPO run (summary.json; the cached SFT cold start is not included);
- the study's headline quantities against a baseline (lrm_fast/sweeps/headline.py: how the baseline is
  chosen, and how each quantity is computed): relative change of the zero-advantage ratio and of the
  correct-response length, the mean sampled response length, and the evaluation variance with k rounds
  against one round;
- tokens per correct answer at matched held-out accuracy against the baseline, from the evaluations'
  stored samples (lrm_fast/sweeps/matched.py: the definitions);
- when the runs log generated tokens (`rollout/generated_tokens_total`), the configurations at an equal
  generated-token budget (lrm_fast/sweeps/budget.py: the definitions): the budget (`--budget`, else the
  baseline's generated tokens), the tokens each configuration generated, its held-out accuracy at the
  budget, and the tokens it took to reach the baseline's final accuracy (how many seeds reached it);
  with the plot of held-out accuracy against generated tokens. Older runs: no such section (None).

The code: runs.py finds, loads and groups the runs; headline.py computes the headline quantities;
budget.py the equal-budget comparison; matched.py the matched-accuracy one; figures.py draws; this module
aggregates and writes.

Simplifications:
- Runs without .hydra/ (hydra.output_subdir=null) have no recorded overrides: then every run's
  configuration is the set of resolved config.yaml values that differ between the runs.
- The command of a run is rebuilt from Hydra's record (multirun.yaml beside a job, else the run's
  .hydra/hydra.yaml) as `lrm-fast-train [-m] OVERRIDES`; `python -m lrm_fast.cli.train` is the same.
- Step metrics are averaged per step, not per response (every step has the same number of prompts).
- A step without correct (incorrect) responses logs length 0: such steps are left out of the length
  means and drawn as gaps.
- The runs of a configuration are aligned on step index and cut to the shortest one.
- Training curves are smoothed per seed by a trailing moving average over `window` steps (fewer at the
  start; default 5% of the steps), then averaged over the seeds that have a value at that step; the band
  is the min-max over those seeds.
- Unfinished runs (no summary.json) are skipped and listed.
"""

import json
from datetime import datetime
from pathlib import Path

import numpy as np

from lrm_fast.sweeps.budget import budget_section
from lrm_fast.sweeps.figures import (
    BUDGET_PLOT,
    PLOT_NAMES,
    accuracy_tokens_figure,
    default_window,
    length_figure,
    pass_at_k_figure,
    training_curves,
)
from lrm_fast.sweeps.headline import choose_baseline, eval_variance_change, headline
from lrm_fast.sweeps.matched import matched_markdown, matched_section
from lrm_fast.sweeps.runs import (
    EDGE_SHARE,
    LENGTHS,
    STEP_MEANS,
    Configuration,
    common_overrides,
    find_runs,
    group_runs,
    run_numbers,
    spread,
)

__all__ = [
    "BUDGET_PLOT",
    "PLOT_NAMES",
    "budget_line",
    "build_report",
    "format_budget",
    "format_headline",
    "format_markdown",
    "format_table",
]


def configuration_numbers(configuration: Configuration) -> list[dict]:
    """The per-run numbers of a configuration's runs, with their final evaluation's variance change."""
    return [
        {
            **run_numbers(run),
            "eval_variance_change": eval_variance_change(run.evaluation),
            "eval_rounds": None if run.evaluation is None else len(run.evaluation["rounds"]),
        }
        for run in configuration.runs
    ]


def summarize_configuration(configuration: Configuration, per_run: list[dict]) -> dict:
    curves = [run.pass_at_k for run in configuration.runs if run.pass_at_k]
    k = min((len(curve) for curve in curves), default=0)
    pass_at_k = np.array([curve[:k] for curve in curves]) if curves else np.zeros((0, 0))
    return {
        "label": configuration.label,
        "overrides": configuration.overrides,
        "seeds": [run.seed for run in configuration.runs],
        "runs": [str(run.path) for run in configuration.runs],
        **{name: spread([numbers[name] for numbers in per_run]) for name in per_run[0]},
        # pass@k over seeds: mean, min and max at every k = 1..k (runs without eval/final.json left out)
        "pass_at_k": {
            "mean": pass_at_k.mean(axis=0).tolist() if curves else None,
            "min": pass_at_k.min(axis=0).tolist() if curves else None,
            "max": pass_at_k.max(axis=0).tolist() if curves else None,
            "seeds": len(curves),
        },
    }


# ------------------------------------------------------------------------------------------- output


def build_report(
    paths: list[str | Path],
    out_dir: str | Path,
    window: int | None = None,
    baseline: str | None = None,
    budget: float | None = None,
) -> dict:
    """Collect, group and aggregate the runs; write report.json, report.md and the plots to `out_dir`.
    `baseline` names the headline quantities' baseline configuration (lrm_fast/sweeps/headline.py);
    `budget` is the generated-token budget (default: the baseline's tokens; lrm_fast/sweeps/budget.py)."""
    runs, skipped = find_runs(paths)
    configurations = group_runs(runs)
    window = window or default_window(configurations)
    numbers = [configuration_numbers(c) for c in configurations]
    base, reason = choose_baseline(configurations, baseline)
    report = {
        "paths": [str(p) for p in paths],
        "generated": datetime.now().isoformat(timespec="seconds"),
        "commands": list(dict.fromkeys(run.command for run in runs if run.command)),
        "common_overrides": common_overrides(configurations),
        "smoothing_window": window,
        "skipped": [str(path) for path in skipped],
        "configurations": [
            summarize_configuration(c, n) for c, n in zip(configurations, numbers, strict=True)
        ],
        "baseline": {"label": configurations[base].label, "reason": reason},
        "headline": headline(configurations, numbers, base),
        "budget": budget_section(configurations, base, budget),
        "matched": matched_section(configurations, base),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(format_markdown(report))
    write_plots(configurations, report, out_dir)
    return report


def write_plots(configurations: list[Configuration], report: dict, out_dir: Path) -> None:
    """PLOT_NAMES, and BUDGET_PLOT when the runs log generated tokens."""
    window = report["smoothing_window"]
    figures = (
        training_curves(configurations, window),
        pass_at_k_figure(report),
        length_figure(configurations, window),
    )
    plots = list(zip(figures, PLOT_NAMES, strict=True))
    if report["budget"] is not None:
        plots.append((accuracy_tokens_figure(configurations, report["budget"]), BUDGET_PLOT))
    for figure, name in plots:
        figure.savefig(out_dir / name, dpi=120, bbox_inches="tight")


TABLE_HEADER = (
    "configuration",
    "seeds",
    "steps",
    "final avg@k % (mean ± std)",
    "min–max",
    "Δ cold start (points)",
    "pass@k %",
    "zero-adv %",
    "all-correct %",
    "all-wrong %",
    "truncated %",
    "len correct first → last",
    "len incorrect first → last",
    "clip frac",
    "approx KL",
    "ref KL",
    "wall s",
)


COLUMN_NOTES = f"""\
Per configuration over its seeds: final avg@k is the held-out score after training (avg@k with k samples
per problem; spread as mean ± sample std and min–max); Δ cold start is its gain over the score before
training, in points; pass@k is the final evaluation's unbiased pass@k at k = 1 and the largest k, mean
over seeds. Zero-advantage ratios (share of groups with all-equal rewards, after RLR / OSI), the
truncated share (sampled responses that filled the response window, "-" for runs that did not log it), clip
fraction and KL (approx: to the rollout policy; ref: to the reference) are means over training steps;
response lengths (tokens) are means over the first and the last {100 * EDGE_SHARE:g}% of the steps; wall
time is the GRPO run's (without the cached SFT cold start)."""


def format_table(report: dict) -> str:
    """The Markdown comparison table: one row per configuration."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for c in report["configurations"]:
        accuracy = c["final_accuracy"]
        cells = [
            f"`{c['label']}`",
            str(len(c["seeds"])),
            _number(c["steps"]["mean"], digits=0),
            _mean_std(accuracy, scale=100),
            f"{_number(accuracy['min'], 100)}–{_number(accuracy['max'], 100)}",
            _mean_std(c["improvement_points"]),
            _pass_at_k_cell(c["pass_at_k"]["mean"]),
            *(_number(c[name]["mean"], 100) for name in STEP_MEANS if name.startswith("zero_adv")),
            _number(c["truncated_ratio"]["mean"], 100),
            *(
                f"{_number(c[f'{name}_first']['mean'])} → {_number(c[f'{name}_last']['mean'])}"
                for name in LENGTHS
            ),
            _number(c["clip_fraction"]["mean"], digits=4),
            _number(c["approx_kl"]["mean"], digits=5),
            _number(c["ref_kl"]["mean"], digits=5),
            _mean_std(c["wall_time_s"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


HEADLINE_HEADER = (
    "configuration",
    "seeds",
    "zero-adv %",
    "Δ zero-adv % vs baseline",
    "len correct (last)",
    "Δ len correct % vs baseline",
    "sampled length (last)",
    "eval rounds",
    "Δ eval variance %, k rounds vs 1",
)

HEADLINE_NOTES = f"""\
The study's headline quantities (lrm_fast/sweeps/headline.py). Baseline: `{{label}}`, {{reason}}.
Δ zero-adv and Δ len correct are relative changes against the baseline, per seed (against the
baseline's run of the same seed, else its seed mean), shown as mean ± sample std [min, max] over
seeds; zero-adv is the mean over training steps, lengths (tokens) are means over the last
{100 * EDGE_SHARE:g}% of the steps, of correct responses and of all sampled ones. Δ eval variance is
the final evaluation's sampling variance with all its rounds against its first round alone (its
baseline is that one-round evaluation; "-": a single round)."""


def format_headline(report: dict) -> str:
    """The Markdown table of the headline quantities: one row per configuration."""
    lines = ["| " + " | ".join(HEADLINE_HEADER) + " |", "|" + "---|" * len(HEADLINE_HEADER)]
    for row in report["headline"]:
        cells = [
            f"`{row['label']}`" + (" (baseline)" if row["baseline"] else ""),
            str(len(row["seeds"])),
            _mean_std(row["zero_adv_ratio"], scale=100),
            _change(row["zero_adv_change"]),
            _mean_std(row["length_correct_last"]),
            _change(row["length_correct_change"]),
            _mean_std(row["length_sampled_last"]),
            _number(row["eval_rounds"]["mean"], digits=0),
            _change(row["eval_variance_change"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


BUDGET_HEADER = (
    "configuration",
    "seeds",
    "generated tokens{unit}",
    "accuracy at budget % (mean ± std)",
    "min–max",
    "tokens to target{unit}: mean [min, max]",
    "reached",
)

BUDGET_LINE = (
    "Budget: {tokens} generated tokens ({chosen}). Target: {target}% held-out accuracy, the final "
    "accuracy of the baseline `{baseline}`, mean over its seeds."
)

BUDGET_NOTES = """\
Generated tokens: every sampled response token, all refill rounds of dynamic sampling included, OSI's
stored solutions not. Accuracy at budget: the accuracy of the last held-out evaluation (cold start at 0
tokens, every eval.every steps, final) at or below the budget; a run that ended below the budget keeps
its final accuracy. Tokens to target: the generated tokens of the first evaluation at or above the
target (0: the cold start already is), mean [min, max] over the seeds that reached it; reached: those
seeds / the seeds that log generated tokens (lrm_fast/sweeps/budget.py)."""


def format_budget(report: dict) -> str:
    """The Markdown table at an equal generated-token budget: one row per configuration."""
    scale, unit = _token_unit(report["budget"])
    header = [name.format(unit=unit) for name in BUDGET_HEADER]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in report["budget"]["configurations"]:
        accuracy = c["accuracy_at_budget"]
        cells = [
            f"`{c['label']}`",
            str(len(c["seeds"])),
            _mean_std(c["generated_tokens"], scale=1 / scale),
            _mean_std(accuracy, scale=100),
            f"{_number(accuracy['min'], 100)}–{_number(accuracy['max'], 100)}",
            _mean_range(c["tokens_to_target"], scale=1 / scale),
            f"{c['reached']}/{c['measured']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_line(budget: dict) -> str:
    """The budget and the target, in words."""
    return BUDGET_LINE.format(
        tokens="-" if budget["tokens"] is None else f"{budget['tokens']:,.0f}",
        chosen=budget["chosen"],
        target=_number(budget["target_accuracy"], 100),
        baseline=budget["baseline"],
    )


def budget_markdown(report: dict) -> str:
    """report.md's section at an equal generated-token budget; empty for runs without generated tokens."""
    if report["budget"] is None:
        return ""
    return f"""
## At an equal generated-token budget

{format_budget(report)}

{budget_line(report["budget"])}
{BUDGET_NOTES}

![accuracy vs generated tokens]({BUDGET_PLOT})

Held-out accuracy against generated tokens: per seed the last evaluation at or below each token count,
line = mean over seeds up to the shortest run's tokens, band = min–max; points = every evaluation.
"""


def format_markdown(report: dict) -> str:
    commands = "\n".join(report["commands"]) or "(not recorded: no .hydra/ in the run directories)"
    common = " ".join(report["common_overrides"]) or "(none)"
    runs = "\n".join(
        f"- `{c['label']}`: seeds {', '.join(map(str, c['seeds']))} ({', '.join(c['runs'])})"
        for c in report["configurations"]
    )
    skipped = "".join(f"\n- skipped, unfinished: {path}" for path in report["skipped"])
    return f"""# Sweep report

`lrm-fast-report {" ".join(report["paths"])}` ({report["generated"]})

Command(s):

```
{commands}
```

Settings shared by all configurations: `{common}`

{format_table(report)}

{COLUMN_NOTES}

{format_headline(report)}

{HEADLINE_NOTES.format(**report["baseline"])}

Runs:
{runs}{skipped}

![training curves](training_curves.png)

Training curves: trailing moving average over {report["smoothing_window"]} step(s) per seed, line = mean
over seeds, band = min–max over seeds.

![pass@k](pass_at_k.png)

![response length](response_length.png)
{budget_markdown(report)}
{matched_markdown(report.get("matched"))}"""


def _pass_at_k_cell(curve: list[float] | None) -> str:
    if not curve:
        return "-"
    ks = [1, len(curve)] if len(curve) > 1 else [1]
    return " / ".join(f"@{k} {100 * curve[k - 1]:.1f}" for k in ks)


def _token_unit(budget: dict) -> tuple[float, str]:
    """The power of 1000 that keeps the budget table's token counts short, and its header suffix."""
    largest = max(
        [budget["tokens"] or 0.0, *(c["generated_tokens"]["max"] or 0.0 for c in budget["configurations"])]
    )
    for scale, unit in ((1e9, " (G)"), (1e6, " (M)"), (1e3, " (k)")):
        if largest >= scale:
            return scale, unit
    return 1.0, ""


def _number(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{scale * value:.{digits}f}"


def _mean_std(stats: dict, scale: float = 1.0, digits: int = 1) -> str:
    if stats["std"] is None:
        return _number(stats["mean"], scale, digits)
    return f"{_number(stats['mean'], scale, digits)} ± {_number(stats['std'], scale, digits)}"


def _mean_range(stats: dict, scale: float = 1.0, digits: int = 1) -> str:
    if stats["mean"] is None:
        return "-"
    low, high = _number(stats["min"], scale, digits), _number(stats["max"], scale, digits)
    return f"{_number(stats['mean'], scale, digits)} [{low}, {high}]"


def _change(stats: dict) -> str:
    """A relative change in percent: mean ± std [min, max], signed."""
    if stats["mean"] is None:
        return "-"
    std = "" if stats["std"] is None else f" ± {100 * stats['std']:.1f}"
    return f"{100 * stats['mean']:+.1f}{std} [{100 * stats['min']:+.1f}, {100 * stats['max']:+.1f}]"
