"""The small twin of benchmarks/async_rollouts.py: both arms run and the report holds what it says."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_fixtures import QUICK

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_async_benchmark_runs_both_arms_and_reports_them(tmp_path):
    out = tmp_path / "bench"
    env = {**os.environ, "LRM_FAST_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "benchmarks.async_rollouts", "--arms", "sync,async", "--seeds", "0"]
    command += ["--steps", "3", "--out", str(out), "--extra", *QUICK]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert [(r["arm"], r["seed"], r["steps"]) for r in report["runs"]] == [("sync", 0, 3), ("async", 0, 3)]
    sync, async_ = report["arms"]
    assert sync["ratio"] == 1.0 and async_["ratio"] == pytest.approx(async_["step_s"] / sync["step_s"])
    assert sync["overlap_s"] == 0.0 and async_["overlap_s"] >= 0.0
    assert 0.0 <= async_["accuracy"] <= 1.0
    table = (out / "results.md").read_text()
    assert "| async | `trainer.max_staleness=1` | 1 |" in table and table in result.stdout
