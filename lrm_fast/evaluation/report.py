"""Reports of `lrm-fast-eval`: the printed summary table and three PNG plots, all from the run JSON.

Scores are shown in percent. The table's columns (one row per benchmark):

- avg@k +- SE: the adaptive score (unbiased mean correctness, evaluation/multi_round.py) and its standard
  error; CI: the bootstrap interval at the run's level.
- pass@k, maj@k: from round 0 (k samples of every problem), at a few k up to that k.
- uncertain: share of problems with per-problem accuracy strictly inside (lo, hi); var: their share of
  the score's variance; var/unif: the adaptive score's variance over that of a uniform allocation of the
  same budget (below 1: adaptive rounds helped).
- SEq, SEs: the standard error's between-question part (another draw of questions) and within-question
  sampling part (shrinks with more samples), lrm_fast/evaluation/variance.py; k*: samples per problem that
  would bring the sampling variance to 10% of the between part ("-": no spread between questions).
- greedy: greedy accuracy; flips: +a/-b, problems that greedy gets right while most samples are wrong,
  and wrong while most samples are right.

With a perturbation (lrm_fast/evaluation/perturbation.py) a second table compares every benchmark NAME
with its perturbed twin NAME+label on the same problems, with `paired_comparison` (the test of
`lrm-fast-eval-compare`): clean and perturbed are the per-problem accuracies c_i / n_i pooled over the
rounds and averaged over the problems (so they can differ from avg@k above by O(1/n_i)); drop = perturbed -
clean, its standard error clustered by problem and its interval at the run's level; p: two-sided, no
difference; worse/better/equal: problems whose accuracy fell, rose, stayed; lost: problems solved by
most clean samples and by fewer than half of the perturbed ones.

The plots use matplotlib's object API (a bare Figure renders with Agg), so no global backend is touched.
"""

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

from lrm_fast.evaluation.adaptive import round_counts, state_of

PLOT_NAMES = ("score_vs_rounds.png", "per_problem_accuracy.png", "pass_at_k.png")


def report_ks(k_max: int) -> list[int]:
    """The k shown in the table: powers of two below k_max and k_max itself, the largest three."""
    powers = [2**j for j in range(1, 16) if 2**j < k_max]
    return [*powers, k_max][-3:]


def format_table(summaries: dict[str, dict]) -> str:
    """One aligned text row per benchmark under a header row."""
    header = ["benchmark", "problems", "samples", "rounds", "avg@k", "+-SE", "CI", "pass@k", "maj@k"]
    header += ["uncertain", "var", "var/unif", "SEq", "SEs", "k*", "greedy", "flips", "stop"]
    return _aligned([header] + [_row(name, summary) for name, summary in summaries.items()])


def _aligned(rows: list[list[str]]) -> str:
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_robustness(pairs: dict[str, dict]) -> str:
    """The clean/perturbed table (module docstring): one row per benchmark, under a line naming the block."""
    header = ["benchmark", "problems", "clean", "perturbed", "drop", "+-SE", "CI", "p"]
    header += ["worse/better/equal", "lost"]
    rows = [header]
    for name, c in pairs.items():
        rows.append(
            [
                name,
                str(c["problems"]),
                f"{100 * c['score_a']:.2f}",
                f"{100 * c['score_b']:.2f}",
                f"{100 * c['difference']:+.2f}",
                f"{100 * c['standard_error']:.2f}",
                f"[{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}]",
                f"{c['p_value']:.2g}" if c["p_value"] >= 1e-16 else "<1e-16",  # the normal tail underflows
                f"{c['b_worse']}/{c['b_better']}/{c['ties']}",
                str(len(c["lost"])),
            ]
        )
    first = next(iter(pairs.values()))
    title = (
        f"robustness: perturbed ({first['perturbation']['source']}, before every prompt) - clean, "
        f"paired by problem, {100 * first['level']:g}% CI"
    )
    return f"{title}\n{_aligned(rows)}"


def _row(name: str, s: dict) -> list[str]:
    pass_at_k = " ".join(f"@{k} {100 * s['pass_at_k'][k - 1]:.1f}" for k in report_ks(len(s["pass_at_k"])))
    greedy, split = s["greedy"], s["variance_decomposition"]
    flips = (
        f"+{greedy['right_where_sampled_wrong']}/-{greedy['wrong_where_sampled_right']}" if greedy else "-"
    )
    return [
        name,
        str(s["problems"]),
        str(s["samples"]),
        str(s["rounds"]),
        f"{100 * s['score']:.2f}",
        f"{100 * s['standard_error']:.2f}",
        f"[{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}]",
        pass_at_k,
        f"@{len(s['maj_at_k'])} {100 * s['maj_at_k'][-1]:.1f}",
        f"{100 * s['uncertain_share']:.1f}%",
        f"{100 * s['uncertain_variance_share']:.1f}%",
        "-" if s["variance_ratio_vs_uniform"] is None else f"{s['variance_ratio_vs_uniform']:.2f}",
        f"{100 * split['between_variance'] ** 0.5:.2f}",
        f"{100 * split['within_variance'] ** 0.5:.2f}",
        "-" if split["samples_for_negligible"] is None else str(split["samples_for_negligible"]),
        f"{100 * greedy['accuracy']:.1f}" if greedy else "-",
        flips,
        str(s["stop_reason"]),
    ]


def write_plots(run: dict, out_dir: str | Path) -> list[Path]:
    """score_vs_rounds.png, per_problem_accuracy.png and pass_at_k.png in `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    entries = {name: entry for name, entry in run["benchmarks"].items() if entry["rounds"]}
    if not entries:
        return []
    paths = [out_dir / name for name in PLOT_NAMES]
    for draw, path in zip((_score_vs_rounds, _accuracy_histograms, pass_at_k_figure), paths, strict=True):
        figure = draw(entries)
        figure.savefig(path, dpi=120, bbox_inches="tight")
    return paths


def _score_vs_rounds(entries: dict[str, dict]) -> Figure:
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for name, entry in entries.items():
        rounds, num_problems = entry["rounds"], len(entry["problems"])
        x = [r["samples_so_far"] / num_problems for r in rounds]
        (line,) = axes.plot(x, [r["score"] for r in rounds], marker="o", label=name)
        low, high = [r["ci_low"] for r in rounds], [r["ci_high"] for r in rounds]
        axes.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
    settings = next(iter(entries.values()))["settings"]
    level = settings.get("confidence_level", settings.get("level"))  # older run files call it "level"
    axes.set(xlabel="samples per problem (mean)", ylabel="score (avg@k)")
    axes.set_title(f"Score after each round, {100 * level:g}% CI band")
    axes.legend()
    return figure


def _accuracy_histograms(entries: dict[str, dict]) -> Figure:
    figure = Figure(figsize=(4 * len(entries), 3.5))
    for axes, (name, entry) in zip(
        np.atleast_1d(figure.subplots(1, len(entries))), entries.items(), strict=True
    ):
        n, c = state_of(round_counts(entry)).totals()
        lo, hi = entry["settings"]["uncertain_lo"], entry["settings"]["uncertain_hi"]
        axes.hist(c / n, bins=np.linspace(0, 1, 21), color="tab:blue")
        axes.axvspan(lo, hi, color="tab:orange", alpha=0.15, label=f"uncertain ({lo:g}, {hi:g})")
        axes.set(xlabel="per-problem accuracy", ylabel="problems", title=name)
        axes.legend()
    return figure


def pass_at_k_figure(entries: dict[str, dict]) -> Figure:
    """pass@k and maj@k of every benchmark against k on a log2 axis; bars when k is 1 (a lone point)."""
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    k_max = max(len(entry["summary"]["pass_at_k"]) for entry in entries.values())
    for i, (name, entry) in enumerate(entries.items()):
        pass_k, maj_k = entry["summary"]["pass_at_k"], entry["summary"]["maj_at_k"]
        if k_max == 1:  # one sample per problem: bars, where a curve would be a lone dot
            bar = axes.bar([2 * i], pass_k, label=f"{name} pass@1 = maj@1")
            axes.bar_label(bar, fmt="%.3f")
            continue
        ks = np.arange(1, len(pass_k) + 1)
        (line,) = axes.plot(ks, pass_k, marker=".", label=f"{name} pass@k")
        axes.plot(ks, maj_k, linestyle="--", color=line.get_color(), label=f"{name} maj@k")
    if k_max == 1:
        axes.set_xticks([2 * i for i in range(len(entries))], list(entries))
    else:
        k_axis(axes, k_max)
    axes.set(xlabel="k (round 0 samples)", ylabel="score", title="pass@k (unbiased) and maj@k")
    axes.legend()
    return figure


def k_axis(axes, k_max: int) -> None:
    """A log2 axis of sample counts 1..k_max ticked at whole powers of two only (no 1.41 or 2^0.5)."""
    axes.set_xscale("log", base=2)
    powers = [2**i for i in range(int(np.log2(k_max)) + 1)]
    axes.xaxis.set_major_locator(FixedLocator(powers))
    axes.xaxis.set_major_formatter(FixedFormatter([str(k) for k in powers]))
    axes.xaxis.set_minor_locator(NullLocator())
