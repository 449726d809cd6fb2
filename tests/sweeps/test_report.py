"""`lrm-fast-report`: grouping and aggregation on hand-made run directories, and one real tiny multirun."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from lrm_fast.cli.report import main as report_main
from lrm_fast.sweeps.budget import accuracy_curve
from lrm_fast.sweeps.figures import BUDGET_PLOT, PLOT_NAMES, moving_average
from lrm_fast.sweeps.report import build_report
from lrm_fast.sweeps.runs import find_runs, group_runs, load_run
from lrm_fast.training.metrics import read_metrics

COMMON = ["trainer=smoke", "eval.problems=16"]

# The run writers below are shared with test_budget.py.


def step_row(step: int, accuracy: float = 0.5, zero_adv: float = 0.25, correct_len: float = 20.0) -> dict:
    return {
        "step": step,
        "reward/accuracy": accuracy,
        "zero_adv/ratio": zero_adv,
        "zero_adv/all_correct": zero_adv / 5,
        "zero_adv/all_wrong": 4 * zero_adv / 5,
        "length/correct_mean": correct_len,
        "length/incorrect_mean": 30.0,
        "loss/clip_fraction": 0.01,
        "loss/approx_kl": 0.002,
        "loss/ref_kl": 0.0,
    }


def make_run(run_dir: Path, seed: int, regime: str, rows: list[dict], final: float, **options) -> Path:
    """A run directory as lrm-fast-train writes it (only the files the report reads); `rows` may hold
    periodic-evaluation rows beside the steps' ones."""
    run_dir.mkdir(parents=True)
    steps = sum("reward/accuracy" in row for row in rows)
    config = {"seed": seed, "regime": {"name": regime}, "trainer": {"steps": steps}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if options.get("hydra", True):
        (run_dir / ".hydra").mkdir()
        overrides = [f"seed={seed}", f"regime={regime}", *COMMON]
        (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if options.get("finished", True):
        cold_start = options.get("cold_start", 0.25)
        summary = {
            "cold_start_heldout_accuracy": cold_start,
            "final_heldout_accuracy": final,
            "improvement_points": 100 * (final - cold_start),
            "steps": steps,
            "wall_time_s": 10.0 + seed,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary))
    if "pass_at_k" in options:
        (run_dir / "eval").mkdir()
        run = {"format": 1, "benchmarks": {"heldout": {"summary": {"pass_at_k": options["pass_at_k"]}}}}
        (run_dir / "eval" / "final.json").write_text(json.dumps(run))
    return run_dir


def make_multirun(root: Path) -> Path:
    """Jobs 0-3 of `-m seed=0,1 regime=full,negative`, in Hydra's job order (last override fastest)."""
    for job, (seed, regime) in enumerate([(0, "full"), (0, "negative"), (1, "full"), (1, "negative")]):
        final = {"full": 0.5, "negative": 0.6}[regime] + 0.2 * seed
        rows = [step_row(step, zero_adv=0.25 + 0.1 * seed) for step in range(1, 11)]
        make_run(root / str(job), seed, regime, rows, final, pass_at_k=[final, final + 0.1])
    task = ["seed=0,1", "regime=full,negative", *COMMON]
    multirun = {
        "hydra": {"overrides": {"hydra": [f"hydra.sweep.dir={root}", "hydra.mode=MULTIRUN"], "task": task}}
    }
    (root / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    return root


def test_report_groups_runs_by_overrides_without_the_seed(tmp_path):
    runs, skipped = find_runs([make_multirun(tmp_path / "sweep")])
    configurations = group_runs(runs)
    assert [c.label for c in configurations] == ["regime=full", "regime=negative"]
    assert [[run.seed for run in c.runs] for c in configurations] == [[0, 1], [0, 1]]
    assert [run.path.name for run in configurations[1].runs] == ["1", "3"]
    assert skipped == []
    assert runs[0].command == (
        f"lrm-fast-train -m hydra.sweep.dir={tmp_path / 'sweep'} seed=0,1 regime=full,negative "
        "trainer=smoke eval.problems=16"
    )


def test_cpu_thread_counts_do_not_split_a_configuration(tmp_path):
    # A sweep continued on one thread beside another one: its later seeds are the same configuration.
    rows = [step_row(1)]
    for seed, threads in ((0, []), (1, ["trainer.num_threads=1", "trainer.update_threads=1"])):
        run = make_run(tmp_path / str(seed), seed, "negative", rows, final=0.5)
        overrides = [f"seed={seed}", "regime=negative", *COMMON, *threads]
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    configurations = group_runs(find_runs([tmp_path])[0])
    assert [[run.seed for run in c.runs] for c in configurations] == [[0, 1]]  # one configuration


def test_report_groups_by_config_differences_without_hydra_records(tmp_path):
    rows = [step_row(1)]
    for name, seed, regime in [("a", 0, "full"), ("b", 1, "full"), ("c", 0, "positive")]:
        make_run(tmp_path / name, seed, regime, rows, final=0.5, hydra=False)
    runs, _ = find_runs([tmp_path])
    configurations = group_runs(runs)
    # seed and trainer.steps are equal or ignored: only regime.name sets the runs apart
    assert [(c.label, [run.seed for run in c.runs]) for c in configurations] == [
        ("regime.name=full", [0, 1]),
        ("regime.name=positive", [0]),
    ]
    assert runs[0].command is None


def test_report_lists_unfinished_runs_and_orders_jobs_numerically(tmp_path):
    for job in (10, 2):
        make_run(tmp_path / str(job), job, "full", [step_row(1)], final=0.5)
    make_run(tmp_path / "3", 3, "full", [step_row(1)], final=0.5, finished=False)
    runs, skipped = find_runs([tmp_path])
    assert [run.path.name for run in runs] == ["2", "10"]
    assert [path.name for path in skipped] == ["3"]


def test_report_aggregates_over_seeds_by_hand(tmp_path):
    # Seed 0: 10 steps, correct length 10 at step 1, 0 (no correct responses) at step 2, 40 at step 10.
    # Seed 1: correct length 20 throughout. The first/last windows are 1 step (10% of 10).
    lengths = {0: [10.0, 0.0, *[25.0] * 7, 40.0], 1: [20.0] * 10}
    for seed in (0, 1):
        rows = [
            step_row(step + 1, zero_adv=0.2 * (seed + 1), correct_len=n)
            for step, n in enumerate(lengths[seed])
        ]
        curve = [0.5, 0.7, 0.8] if seed == 0 else [0.3, 0.5]  # k = 3 and 2: cut to k = 2
        make_run(tmp_path / str(seed), seed, "full", rows, final=0.5 + 0.2 * seed, pass_at_k=curve)
    report = build_report([tmp_path], tmp_path / "out")
    (c,) = report["configurations"]
    assert c["final_accuracy"]["mean"] == pytest.approx(0.6)
    assert c["final_accuracy"]["std"] == pytest.approx(math.sqrt(0.02))  # (0.1^2 + 0.1^2) / (2 - 1)
    assert (c["final_accuracy"]["min"], c["final_accuracy"]["max"]) == (0.5, pytest.approx(0.7))
    assert c["improvement_points"]["mean"] == pytest.approx(35.0)  # 100 * (0.6 - 0.25)
    assert c["zero_adv_ratio"]["mean"] == pytest.approx(0.3)  # seeds at 0.2 and 0.4
    assert c["zero_adv_all_wrong"]["mean"] == pytest.approx(0.24)
    assert c["length_correct_first"]["mean"] == pytest.approx(15.0)  # (10 + 20) / 2
    assert c["length_correct_last"]["mean"] == pytest.approx(30.0)  # (40 + 20) / 2
    assert c["pass_at_k"]["mean"] == pytest.approx([0.4, 0.6])
    assert c["wall_time_s"]["mean"] == pytest.approx(10.5)
    assert report["smoothing_window"] == 1  # 10 steps / 20, at least 1


def test_report_moving_average_is_trailing_and_skips_gaps():
    values = np.array([1.0, 2.0, 3.0, np.nan, 5.0])
    np.testing.assert_allclose(moving_average(values, 2), [1.0, 1.5, 2.5, 3.0, 5.0])
    np.testing.assert_allclose(moving_average(values, 1), values)
    assert np.isnan(moving_average(np.array([np.nan, np.nan]), 3)).all()


def test_report_cli_prints_the_table_and_writes_the_files(tmp_path, capsys):
    sweep = make_multirun(tmp_path / "sweep")
    report_main([str(sweep)])
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("| configuration | seeds |")
    assert "| `regime=negative` | 2 | 10 | 70.0 ± 14.1 | 60.0–80.0 |" in printed
    for name in ("report.md", "report.json", *PLOT_NAMES):
        assert (sweep / "report" / name).stat().st_size > 0


# ------------------------------------------------------------------------------- headline quantities


def _eval_entry(outcomes: dict[int, list[list[bool]]], perturbation: dict | None = None) -> dict:
    """A benchmark entry of a run file: outcomes[round] lists every problem's samples of that round."""
    num_problems = len(outcomes[0])
    problems = [
        {"id": str(i), "samples": [{"round": r, "correct": ok} for r in outcomes for ok in outcomes[r][i]]}
        for i in range(num_problems)
    ]
    rounds = [{}] * len(outcomes)
    summary = {"pass_at_k": [0.75]}  # read for the pass@k column only
    return {
        "settings": {"perturbation": perturbation},
        "problems": problems,
        "rounds": rounds,
        "summary": summary,
    }


def _write_eval(path: Path, entries: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": 1, "benchmarks": entries}))


# Problem 0: half right in both rounds (n = 2 + 2); problem 1: always right (n = 2 + 6). Round budgets
# 4 and 8 give weights 1/3 and 2/3, so problem 0's effective n is 1 / ((1/3)^2/2 + (2/3)^2/2) = 18/5,
# and problem 1 has s^2 = 0: Var_k / Var_1 = (s0^2 / (18/5)) / (s0^2 / 2) = 5/9, a change of -4/9.
TWO_ROUNDS = {0: [[True, False], [True, True]], 1: [[True, False], [True] * 6]}


def _headline_sweep(root: Path) -> Path:
    """regime=full (seeds 0, 1) and regime=negative (seeds 0, 1, 2), constant metrics per run."""
    values = {  # (regime, seed): (zero-adv ratio, correct length, sampled length)
        ("full", 0): (0.5, 20.0, 30.0),
        ("full", 1): (0.4, 25.0, 34.0),
        ("negative", 0): (0.3, 15.0, 22.0),
        ("negative", 1): (0.2, 20.0, 26.0),
        ("negative", 2): (0.27, 18.0, 24.0),
    }
    for job, ((regime, seed), (zero_adv, correct, sampled)) in enumerate(values.items()):
        rows = [
            {**step_row(step, zero_adv=zero_adv, correct_len=correct), "length/response_mean": sampled}
            for step in range(1, 11)
        ]
        run = make_run(root / str(job), seed, regime, rows, final=0.5)
        if regime == "negative":
            _write_eval(run / "eval" / "final.json", {"heldout": _eval_entry({0: TWO_ROUNDS[0]})})
            attacked = _eval_entry(TWO_ROUNDS, {"label": "attack"})  # perturbed: never the final evaluation
            entries = {"arithmetic+attack": attacked, "arithmetic": _eval_entry(TWO_ROUNDS)}
            _write_eval(run / "eval_final" / "results.json", entries)
    return root


def test_headline_quantities_by_hand(tmp_path):
    report = build_report([_headline_sweep(tmp_path / "sweep")], tmp_path / "out")
    assert report["baseline"] == {"label": "regime=full", "reason": "the first configuration in job order"}
    full, negative = report["headline"]
    assert full["baseline"] and full["zero_adv_change"]["values"] == [0.0, 0.0]
    # Seeds 0 and 1 against the baseline's own seeds, seed 2 against its mean (0.45 and 22.5).
    assert negative["zero_adv_change"]["values"] == pytest.approx(
        [0.3 / 0.5 - 1, 0.2 / 0.4 - 1, 0.27 / 0.45 - 1]
    )
    assert negative["zero_adv_change"]["mean"] == pytest.approx((-0.4 - 0.5 - 0.4) / 3)
    assert (negative["zero_adv_change"]["min"], negative["zero_adv_change"]["max"]) == pytest.approx(
        (-0.5, -0.4)
    )
    assert negative["length_correct_change"]["values"] == pytest.approx([-0.25, -0.2, -0.2])
    assert negative["length_sampled_last"]["mean"] == pytest.approx(24.0)
    assert full["length_sampled_last"]["mean"] == pytest.approx(32.0)
    # The lrm-fast-eval results.json (2 rounds) wins over the trainer's one-round eval/final.json.
    assert negative["eval_rounds"]["values"] == [2, 2, 2]
    assert negative["eval_variance_change"]["values"] == pytest.approx([-4 / 9] * 3)
    assert full["eval_variance_change"]["mean"] is None  # no evaluation file at all
    table = (tmp_path / "out" / "report.md").read_text()
    assert "| `regime=negative` | 3 | 25.7 ± 5.1 | -43.3 ± 5.8 [-50.0, -40.0] |" in table
    assert "| -44.4 ± 0.0 [-44.4, -44.4] |" in table


def test_headline_baseline_choice(tmp_path, capsys):
    sweep = _headline_sweep(tmp_path / "sweep")
    by_path = build_report([sweep], tmp_path / "a", baseline=str(sweep / "2"))  # job 2: regime=negative
    assert by_path["baseline"]["label"] == "regime=negative"
    assert by_path["headline"][0]["zero_adv_change"]["values"] == pytest.approx(
        [0.5 / 0.3 - 1, 0.4 / 0.2 - 1]
    )
    by_label = build_report([sweep], tmp_path / "b", baseline="regime=negative")
    assert by_label["headline"] == by_path["headline"]
    with pytest.raises(ValueError, match="runs must belong to one configuration, found 2"):
        build_report([sweep], tmp_path / "c", baseline=str(sweep))
    with pytest.raises(SystemExit, match="neither a run directory nor a configuration"):
        report_main([str(sweep), "--baseline", "regime=positive"])
    # A configuration that only has the shared overrides is the sweep's default: it is the baseline.
    rows = [step_row(step) for step in range(1, 3)]
    for name, overrides in (("a", ["+x=1"]), ("b", [])):
        run = make_run(tmp_path / "own" / name, 0, "full", rows, final=0.5)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*COMMON, *overrides]))
    report_main([str(tmp_path / "own")])
    printed = capsys.readouterr().out
    assert "baseline: (common settings) (the configuration without overrides of its own)" in printed
    assert "| `(common settings)` (baseline) | 1 |" in printed


# ---------------------------------------------------------------------------------- real multirun

TINY_SWEEP = [
    "seed=0,1",
    "regime=full,negative",
    "trainer=smoke",
    "trainer.prompts_per_step=8",
    "rollout.group_size=4",
    "eval.problems=16",
    "eval.samples_per_problem=4",  # a pass@k curve with k = 1..4 to average over seeds
    "eval.every=2",  # one periodic evaluation (step 2 of 4) on the accuracy-against-tokens curve
    "cold_start.steps=40",
    "cold_start.batch_size=32",
    "cold_start.warmup_steps=5",
    "cold_start.num_problems=2000",
    "data.train_problems=200",
    "trainer.progress_bar=false",
]


def _direct_numbers(job: Path) -> dict:
    """The report's numbers of one job, straight from its files."""
    summary = json.loads((job / "summary.json").read_text())
    rows = [row for row in read_metrics(job) if "reward/accuracy" in row]
    final = json.loads((job / "eval" / "final.json").read_text())
    return {
        "final_accuracy": summary["final_heldout_accuracy"],
        "improvement_points": summary["improvement_points"],
        "wall_time_s": summary["wall_time_s"],
        "zero_adv_ratio": np.mean([row["zero_adv/ratio"] for row in rows]),
        "zero_adv_all_wrong": np.mean([row["zero_adv/all_wrong"] for row in rows]),
        "clip_fraction": np.mean([row["loss/clip_fraction"] for row in rows]),
        "pass_at_k": final["benchmarks"]["heldout"]["summary"]["pass_at_k"],
    }


def _direct_curve(job: Path) -> list[tuple[float, float]]:
    """(generated tokens, held-out accuracy) of one job's evaluations, straight from its files."""
    summary = json.loads((job / "summary.json").read_text())
    rows = read_metrics(job)
    steps = [row for row in rows if "reward/accuracy" in row]
    totals = np.cumsum([row["rollout/generated_tokens"] for row in steps]).tolist()
    assert [row["rollout/generated_tokens_total"] for row in steps] == totals
    evals = [(totals[row["step"] - 1], row["eval/accuracy"]) for row in rows if "eval/accuracy" in row]
    cold, final = summary["cold_start_heldout_accuracy"], summary["final_heldout_accuracy"]
    return [(0.0, cold), *evals, (totals[-1], final)]


@pytest.mark.slow
def test_report_of_a_real_tiny_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "LRM_FAST_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lrm_fast.cli.train", "-m", *TINY_SWEEP, f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    report_main([str(sweep), "--out", str(tmp_path / "report")])
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    table = (tmp_path / "report" / "report.md").read_text()
    assert [c["label"] for c in report["configurations"]] == ["regime=full", "regime=negative"]
    assert report["commands"] == [f"lrm-fast-train -m hydra.sweep.dir={sweep} " + " ".join(TINY_SWEEP)]
    for c, jobs in zip(report["configurations"], (["0", "2"], ["1", "3"]), strict=True):
        assert c["seeds"] == [0, 1] and [Path(run).name for run in c["runs"]] == jobs
        direct = [_direct_numbers(sweep / job) for job in jobs]
        for name in (
            "final_accuracy",
            "improvement_points",
            "wall_time_s",
            "zero_adv_ratio",
            "clip_fraction",
        ):
            values = [numbers[name] for numbers in direct]
            assert c[name]["mean"] == pytest.approx(np.mean(values)), name
            assert c[name]["std"] == pytest.approx(np.std(values, ddof=1)), name
        assert c["zero_adv_all_wrong"]["mean"] == pytest.approx(
            np.mean([d["zero_adv_all_wrong"] for d in direct])
        )
        assert c["pass_at_k"]["mean"] == pytest.approx(np.mean([d["pass_at_k"] for d in direct], axis=0))
        mean, std = 100 * c["final_accuracy"]["mean"], 100 * c["final_accuracy"]["std"]
        assert f"| `{c['label']}` | 2 | 4 | {mean:.1f} ± {std:.1f} |" in table
    # The equal-budget section: curves of cold start, the evaluation at step 2 and the final one; the
    # default budget is the baseline's (regime=full, jobs 0 and 2) mean generated tokens.
    curves = {job: _direct_curve(sweep / job) for job in "0123"}
    assert all(len(curve) == 3 for curve in curves.values())
    for job, curve in curves.items():
        tokens, accuracy = accuracy_curve(load_run(sweep / job))
        assert list(zip(tokens.tolist(), accuracy.tolist(), strict=True)) == curve
    budget = report["budget"]
    assert budget["tokens"] == pytest.approx((curves["0"][-1][0] + curves["2"][-1][0]) / 2)
    for c, jobs in zip(budget["configurations"], ("02", "13"), strict=True):
        assert c["generated_tokens"]["values"] == [curves[job][-1][0] for job in jobs]
    # One row per configuration in the main table, the headline table and the budget table.
    assert sum(line.startswith("| `regime=") for line in table.splitlines()) == 6
    for name in (*PLOT_NAMES, BUDGET_PLOT):
        assert (tmp_path / "report" / name).stat().st_size > 10_000
