"""`lrm-fast-report` at an equal generated-token budget, on hand-made runs that log generated tokens."""

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from test_report import make_multirun, make_run, step_row

from lrm_fast.cli.report import main as report_main
from lrm_fast.sweeps.budget import accuracy_curve, budget_section
from lrm_fast.sweeps.figures import BUDGET_PLOT, PLOT_NAMES, accuracy_tokens_figure, token_band
from lrm_fast.sweeps.headline import choose_baseline
from lrm_fast.sweeps.report import format_budget
from lrm_fast.sweeps.runs import find_runs, group_runs, load_run


def _token_run(
    run_dir: Path, seed: int, regime: str, totals: list[int], evals: dict[int, float], final: float, **options
) -> Path:
    """Steps with cumulative generated tokens `totals`; after step s, the row {"step": s, "eval/accuracy":
    evals[s]}, as the trainer writes them (a separate row of the same step)."""
    rows = []
    for step, (before, total) in enumerate(pairwise([0, *totals]), start=1):
        tokens = {"rollout/generated_tokens": total - before, "rollout/generated_tokens_total": total}
        rows.append({**step_row(step), **tokens})
        if step in evals:
            rows.append({"step": step, "eval/accuracy": evals[step]})
    return make_run(run_dir, seed, regime, rows, final, **options)


def _sweep(root: Path) -> Path:
    """regime=full (the baseline: first in job order), seeds 0-1; regime=negative, seeds 0-2.
    Evaluation points (tokens, accuracy), cold start at 0:
      full 0:     (0, .25) (200, .4)                         (400, .5) final
      full 1:     (0, .25) (300, .5)                         (600, .7) final
      negative 0: (0, .25) (200, .6) (400, .55) (600, .8)   (800, .9) final
      negative 1: (0, .65) (240, .7) (480, .5)              (600, .75) final
      negative 2: (0, .25) (500, .3)                        (1000, .55) final
    Target: the baseline's final accuracy, (.5 + .7) / 2 = .6; default budget: (400 + 600) / 2 = 500."""
    runs = [
        ("full", 0, [100, 200, 300, 400], {2: 0.4}, 0.5, 0.25),
        ("full", 1, [150, 300, 450, 600], {2: 0.5}, 0.7, 0.25),
        ("negative", 0, [100 * s for s in range(1, 9)], {2: 0.6, 4: 0.55, 6: 0.8}, 0.9, 0.25),
        ("negative", 1, [120 * s for s in range(1, 6)], {2: 0.7, 4: 0.5}, 0.75, 0.65),
        ("negative", 2, [100 * s for s in range(1, 11)], {5: 0.3}, 0.55, 0.25),
    ]
    for job, (regime, seed, totals, evals, final, cold) in enumerate(runs):
        _token_run(root / str(job), seed, regime, totals, evals, final, cold_start=cold)
    return root


def _budget(root: Path, baseline: str | None = None, budget: float | None = None) -> dict | None:
    """The report's budget section without the plots (the slow part of build_report)."""
    configurations = group_runs(find_runs([root])[0])
    return budget_section(configurations, choose_baseline(configurations, baseline)[0], budget)


def test_the_accuracy_curve_reads_cold_start_evaluations_and_final(tmp_path):
    run = load_run(_token_run(tmp_path / "run", 0, "full", [10, 30, 60], {1: 0.3, 2: 0.4}, 0.5))
    tokens, accuracy = accuracy_curve(run)
    assert tokens.tolist() == [0, 10, 30, 60]
    assert accuracy.tolist() == [0.25, 0.3, 0.4, 0.5]
    assert [row["step"] for row in run.rows] == [1, 2, 3]  # the evaluation rows are not steps


def test_accuracy_at_budget_is_the_last_evaluation_at_or_below_it(tmp_path):
    budget = _budget(_sweep(tmp_path / "sweep"))
    assert budget["tokens"] == 500.0  # the baseline's generated tokens, mean over its seeds
    assert budget["chosen"] == "the baseline's generated tokens over its run, mean over its seeds"
    assert (budget["baseline"], budget["target_accuracy"]) == ("regime=full", pytest.approx(0.6))
    full, negative = budget["configurations"]
    # full: both runs ended below 500 or at 300 < 500 < 600: final .5 (at 400), the eval at 300 (.5).
    assert full["accuracy_at_budget"]["values"] == [0.5, 0.5]
    # negative 0: the eval at 400 (.55), not the better one at 200; 1: at 480 (.5); 2: at exactly 500.
    assert negative["accuracy_at_budget"]["values"] == [0.55, 0.5, 0.3]
    assert negative["accuracy_at_budget"]["mean"] == pytest.approx(0.45)
    assert (negative["accuracy_at_budget"]["min"], negative["accuracy_at_budget"]["max"]) == (0.3, 0.55)
    assert negative["generated_tokens"]["values"] == [800.0, 600.0, 1000.0]
    assert full["generated_tokens"]["mean"] == 500.0


def test_tokens_to_target_is_the_first_evaluation_at_or_above_it(tmp_path):
    budget = _budget(_sweep(tmp_path / "sweep"))
    full, negative = budget["configurations"]
    # negative 0: the eval at 200 equals the target; 1: the cold start is already above it (0 tokens);
    # 2: never reaches it (None), left out of the mean and counted as not reached.
    assert negative["tokens_to_target"]["values"] == [200.0, 0.0, None]
    assert negative["tokens_to_target"]["mean"] == 100.0
    assert (negative["tokens_to_target"]["min"], negative["tokens_to_target"]["max"]) == (0.0, 200.0)
    assert (negative["reached"], negative["measured"]) == (2, 3)
    # the baseline itself: seed 0 ends at .5 < .6, seed 1 reaches it with its final evaluation
    assert full["tokens_to_target"]["values"] == [None, 600.0]
    assert (full["reached"], full["measured"]) == (1, 2)
    table = format_budget({"budget": budget})
    assert "| `regime=negative` | 3 | 0.8 ± 0.2 | 45.0 ± 13.2 | 30.0–55.0 | 0.1 [0.0, 0.2] | 2/3 |" in table
    assert "| `regime=full` | 2 | 0.5 ± 0.1 | 50.0 ± 0.0 | 50.0–50.0 | 0.6 [0.6, 0.6] | 1/2 |" in table


def test_the_budget_follows_the_baseline(tmp_path):
    budget = _budget(_sweep(tmp_path / "sweep"), baseline="regime=negative")
    assert budget["tokens"] == 800.0  # (800 + 600 + 1000) / 3
    assert budget["target_accuracy"] == pytest.approx((0.9 + 0.75 + 0.55) / 3)
    # full 1 at 800: its final (.7, at 600) is below the target .733: no seed of full reaches it
    assert budget["configurations"][0]["accuracy_at_budget"]["values"] == [0.5, 0.7]
    assert budget["configurations"][0]["reached"] == 0


def test_cli_budget_override_prints_the_table_and_writes_the_plot(tmp_path, capsys):
    sweep, out = _sweep(tmp_path / "sweep"), tmp_path / "out"
    report_main([str(sweep), "--out", str(out), "--budget", "250"])
    budget = json.loads((out / "report.json").read_text())["budget"]
    assert (budget["tokens"], budget["chosen"]) == (250.0, "--budget 250")
    # at 250: full 0 and 1 at the eval at 200 (.4) and the cold start (.25); negative at 200 (.6), 240
    # (.7) and the cold start (.25)
    full, negative = budget["configurations"]
    assert full["accuracy_at_budget"]["values"] == [0.4, 0.25]
    assert negative["accuracy_at_budget"]["values"] == [0.6, 0.7, 0.25]
    assert negative["tokens_to_target"]["values"] == [200.0, 0.0, None]  # the budget does not matter
    printed = capsys.readouterr().out
    assert "at an equal generated-token budget. Budget: 250 generated tokens (--budget 250)." in printed
    assert "| `regime=negative` | 3 | 0.8 ± 0.2 | 51.7 ± 23.6 | 25.0–70.0 |" in printed
    assert f"wrote {out / BUDGET_PLOT}" in printed
    assert "## At an equal generated-token budget" in (out / "report.md").read_text()
    assert (out / BUDGET_PLOT).stat().st_size > 10_000
    with pytest.raises(SystemExit):  # argparse: a negative budget is refused
        report_main([str(sweep), "--budget", "-1"])


def test_token_band_is_the_seed_mean_of_the_step_functions(tmp_path):
    sweep = _sweep(tmp_path / "sweep")
    curves = [accuracy_curve(load_run(sweep / job)) for job in ("0", "1")]
    tokens, mean, low, high = token_band(curves)
    # the union of the evaluation points up to the shorter run's 400 tokens; seed 0 reads .25 .4 .4 .5,
    # seed 1 reads .25 .25 .5 .5
    assert tokens.tolist() == [0, 200, 300, 400]
    np.testing.assert_allclose(mean, [0.25, 0.325, 0.45, 0.5])
    np.testing.assert_allclose(low, [0.25, 0.25, 0.4, 0.5])
    np.testing.assert_allclose(high, [0.25, 0.4, 0.5, 0.5])


def test_runs_without_the_token_metric_have_no_budget_section(tmp_path, capsys):
    sweep = make_multirun(tmp_path / "sweep")
    report_main([str(sweep)])
    assert json.loads((sweep / "report" / "report.json").read_text())["budget"] is None
    assert "generated-token budget" not in (sweep / "report" / "report.md").read_text()
    assert "generated-token budget" not in capsys.readouterr().out
    assert not (sweep / "report" / BUDGET_PLOT).exists()
    assert all((sweep / "report" / name).exists() for name in PLOT_NAMES)


def test_a_baseline_without_the_token_metric_needs_a_budget(tmp_path):
    # an older baseline run beside a new one: the target still comes from the baseline's summary
    make_run(tmp_path / "sweep" / "0", 0, "full", [step_row(1), step_row(2)], final=0.6)
    _token_run(tmp_path / "sweep" / "1", 0, "negative", [100, 200], {1: 0.7}, 0.8)
    budget = _budget(tmp_path / "sweep")
    assert budget["tokens"] is None and budget["chosen"].startswith("none: the baseline's runs do not log")
    full, negative = budget["configurations"]
    assert full["accuracy_at_budget"]["values"] == [None] and full["measured"] == 0
    assert negative["accuracy_at_budget"]["values"] == [None]
    assert negative["tokens_to_target"]["values"] == [100.0]
    # the plot draws the run that has a curve, without a budget line
    configurations = group_runs(find_runs([tmp_path / "sweep"])[0])
    axes = accuracy_tokens_figure(configurations, budget).axes[0]
    assert [line.get_label() for line in axes.get_legend().get_lines()] == [
        "regime=negative",
        "target 60.0% (baseline final)",
    ]
    given = _budget(tmp_path / "sweep", budget=150)
    assert given["configurations"][1]["accuracy_at_budget"]["values"] == [0.7]
