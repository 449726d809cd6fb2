"""Runs in parallel (a joblib sweep's jobs, or runs started side by side) share the default MLflow store.

Two processes open their tracked runs in one new store at once and log steps together: the store is
created once (under a file lock: MLflow's schema migrations fail when two processes run them at once),
and SQLite serialises the writes, so every run holds every step."""

import os
import subprocess
import sys

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # this process reads the store (see below)
mlflow = pytest.importorskip("mlflow")

STEPS = 30
RUN = """
import sys
from pathlib import Path

from lrm_fast.config import TrainConfig
from lrm_fast.config.choices import Tracker
from lrm_fast.training.tracking import TrackedRun, open_trackers

run_dir, store = Path(sys.argv[1]), sys.argv[2]
run = TrackedRun(project="parallel", name=run_dir.name, store_dir=store)
trackers = open_trackers([Tracker.mlflow], run_dir, run, TrainConfig())
trackers.begin(1)  # as a resumed run: no cold-start evaluation to look for
for step in range(1, {steps} + 1):
    trackers.log(step, {{"loss/policy": step / 10, "reward/mean": 1.0}})
trackers.close(finished=True)
"""


@pytest.mark.slow
def test_parallel_runs_create_and_share_one_store(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    runs = [tmp_path / f"run{i}" for i in range(2)]
    script = RUN.format(steps=STEPS)
    processes = []
    for run_dir in runs:
        run_dir.mkdir()
        command = [sys.executable, "-c", script, str(run_dir), str(tmp_path)]
        processes.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True))
    errors = [process.communicate(timeout=300)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], errors
    assert not any("trainer.trackers" in error for error in errors), errors  # no tracker dropped mid-run

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = mlflow.search_runs(experiment_names=["parallel"], output_format="list")
    assert sorted(run.info.run_name for run in found) == ["run0", "run1"]
    client = mlflow.MlflowClient()
    for run in found:
        history = client.get_metric_history(run.info.run_id, "loss/policy")
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
        assert run.info.status == "FINISHED"
