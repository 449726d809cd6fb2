"""lrm_fast/sweeps/matched.py: tokens per correct answer at matched held-out accuracy, from stored samples."""

import json
from pathlib import Path

import pytest
from test_report import make_run, step_row

from lrm_fast.cli.report import main as report_main
from lrm_fast.sweeps.matched import pooled
from lrm_fast.sweeps.report import build_report
from lrm_fast.sweeps.runs import find_runs, group_runs


def write_eval(run_dir: Path, name: str, results: list[tuple[bool, int]], second_round: int = 0) -> None:
    """RUN/eval/NAME.json as the evaluator writes it, one sample per problem: (correct, length); the first
    `second_round` problems also get a wrong round-1 sample of 999 tokens (an adaptive evaluation's)."""
    problems = [
        {"id": f"p{i}", "samples": [{"round": 0, "correct": correct, "length": length, "finished": True}]}
        for i, (correct, length) in enumerate(results)
    ]
    for problem in problems[:second_round]:
        problem["samples"].append({"round": 1, "correct": False, "length": 999, "finished": True})
    summary = {"pass_at_k": [sum(correct for correct, _ in results) / len(results)]}
    run = {"format": 1, "benchmarks": {"heldout": {"problems": problems, "rounds": [], "summary": summary}}}
    (run_dir / "eval").mkdir(exist_ok=True)
    (run_dir / "eval" / f"{name}.json").write_text(json.dumps(run))


def outcomes(correct: int, wrong: int, correct_len: int, wrong_len: int = 192) -> list[tuple[bool, int]]:
    return [(True, correct_len)] * correct + [(False, wrong_len)] * wrong


def sweep(root: Path, evaluations: dict[str, dict[str, list]]) -> Path:
    """One run per regime (seed 0) of 4 steps, with the given evaluations (name -> outcomes)."""
    for regime, evals in evaluations.items():
        run_dir = make_run(root / regime, 0, regime, [step_row(s) for s in range(1, 5)], final=0.5)
        for name, results in evals.items():
            write_eval(run_dir, name, results)
    return root


def test_overlapping_final_accuracies_compare_at_the_final_steps(tmp_path, capsys):
    root = sweep(
        tmp_path,
        {
            "full": {"cold_start": outcomes(20, 80, 100), "final": outcomes(40, 60, 150)},
            "negative": {"cold_start": outcomes(20, 80, 100), "final": outcomes(45, 55, 120)},
        },
    )
    section = build_report([root], tmp_path / "out", baseline="regime=full")["matched"]
    [comparison] = section["comparisons"]
    assert comparison["compared_at"] == "final" and comparison["held"] is True
    base, other = comparison["baseline"], comparison["other"]
    assert (base["step"], other["step"]) == ("final", "final")
    assert (base["accuracy"], other["accuracy"]) == (0.4, 0.45)
    assert (base["tokens_per_correct"], other["tokens_per_correct"]) == (150, 120)
    assert other["generated_per_correct"] == pytest.approx((45 * 120 + 55 * 192) / 45)
    assert "matched accuracy" in (tmp_path / "out" / "report.md").read_text()
    report_main([str(root), "--out", str(tmp_path / "cli"), "--baseline", "regime=full"])
    assert (
        "| regime=negative | final | final, 40.0 | final, 45.0 | 150.0 | 120.0 |" in capsys.readouterr().out
    )


def test_separated_final_accuracies_compare_at_the_closest_pair(tmp_path):
    root = sweep(
        tmp_path,
        {
            # The cold starts are equal, as every configuration's are: no candidate.
            "full": {
                "cold_start": outcomes(20, 80, 100),
                "step_2": outcomes(50, 50, 140),
                "final": outcomes(90, 10, 160),
            },
            "negative": {
                "cold_start": outcomes(20, 80, 100),
                "step_2": outcomes(30, 70, 110),
                "final": outcomes(49, 51, 150),
            },
        },
    )
    section = build_report([root], tmp_path / "out", baseline="regime=full")["matched"]
    [comparison] = section["comparisons"]
    assert comparison["compared_at"] == "closest accuracies"
    # 0.50 (full, step 2) against 0.49 (negative, final): the closest of the four pairs
    assert (comparison["baseline"]["step"], comparison["other"]["step"]) == (2, "final")
    assert comparison["held"] is False  # 150 tokens per correct answer against 140


def test_every_seed_is_pooled_round_zero_only_and_steps_missing_in_a_seed_are_left_out(tmp_path):
    for seed in (0, 1):
        rows = [step_row(s) for s in range(1, 5 - seed)]  # the seeds end at different steps
        run_dir = make_run(tmp_path / str(seed), seed, "full", rows, final=0.5)
        write_eval(run_dir, "final", outcomes(10 * (seed + 1), 10, 100 + 50 * seed), second_round=5)
        if seed == 0:
            write_eval(run_dir, "step_2", outcomes(1, 1, 10))
    [configuration] = group_runs(find_runs([tmp_path])[0])
    points = pooled(configuration)
    assert list(points) == ["final"]
    assert points["final"]["samples"] == 50 and points["final"]["accuracy"] == pytest.approx(30 / 50)
    assert points["final"]["tokens_per_correct"] == pytest.approx((10 * 100 + 20 * 150) / 30)


def test_runs_without_stored_samples_have_no_matched_section(tmp_path):
    root = sweep(tmp_path, {"full": {}, "negative": {}})
    report = build_report([root], tmp_path / "out", baseline="regime=full")
    assert report["matched"] is None
    assert "matched accuracy" not in (tmp_path / "out" / "report.md").read_text()
