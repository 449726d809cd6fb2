"""Nothing lost, nothing silently mixed: one run per directory, a resume that keeps its run's settings,
a divergence guard that rolls back and stops, and bad input refused as one line before any model."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainer_fixtures import QUICK

from lrm_fast.training.metrics import read_metrics


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "LRM_FAST_CACHE": str(cache), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}


def _command(args):
    return [sys.executable, "-m", "lrm_fast.cli.train", *QUICK, *args]


def _train(args, env, cwd):
    return subprocess.run(_command(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def _resume(run, args, env, cwd):
    """A resume as a user types it: the run directory and what may change, the rest from the run."""
    command = [sys.executable, "-m", "lrm_fast.cli.train", f"trainer.resume={run}", *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def _error_line(result) -> str:
    """The one line a refused launch prints (and nothing of a traceback)."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def _files(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` by relative path, but the lock: a launch that takes it (and then refuses
    the directory) writes its own pid there."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


def test_a_second_run_on_a_live_run_directory_is_refused(env, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        _command(["trainer.steps=200", f"hydra.run.dir={run}", "seed=0"]),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while not (run / "metrics.jsonl").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the test could overlap it"
        record = _files(run / ".hydra")
        assert b"seed=0" in record["overrides.yaml"]
        second = _train(["trainer.steps=6", f"hydra.run.dir={run}", "seed=1"], env, tmp_path)
        line = _error_line(second)
        assert f"{run} is in use by another lrm-fast-train run (pid {first.pid} on " in line
        assert _files(run / ".hydra") == record  # the refused launch wrote nothing there
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    steps = [row["step"] for row in read_metrics(run)]
    assert steps == sorted(set(steps))  # one run's rows only
    assert "seed: 0" in (run / "config.yaml").read_text()
    # Dead now: its directory is reused only through trainer.resume (the kernel dropped the lock).
    before = _files(run)
    again = _train(["trainer.steps=6", f"hydra.run.dir={run}"], env, tmp_path)
    assert f"{run} already holds a run" in _error_line(again) and "trainer.resume=" in _error_line(again)
    assert _files(run) == before  # nothing of the run's directory changed
    resumed = _train([f"trainer.resume={run}", "trainer.steps=2"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def test_resume_keeps_the_runs_own_settings_and_refuses_a_change(env, tmp_path):
    run = tmp_path / "run"
    started = _train(
        ["trainer.steps=2", "rollout.group_size=2", "regime=negative", f"hydra.run.dir={run}"], env, tmp_path
    )
    assert started.returncode == 0, started.stderr[-3000:]
    saved = (run / "config.yaml").read_text()

    refused = _train([f"trainer.resume={run}", "trainer.lr=1e-3", "loss=dr_grpo"], env, tmp_path)
    line = _error_line(refused)
    assert "cannot change" in line and "trainer.lr=0.001 (the run has 0.0003)" in line
    assert "loss.aggregation='seq_mean_token_sum_norm' (the run has 'token_mean')" in line
    assert (run / "config.yaml").read_text() == saved  # untouched by the refused resume
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())

    # Only a longer run: group size, regime and the QUICK settings all come from the run.
    resumed = _resume(run, ["trainer.steps=4"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    config = (run / "config.yaml").read_text()
    expected = saved.replace("steps: 2\n", "steps: 4\n", 1).replace("resume: null", f"resume: {run}")
    assert config == expected
    history = [json.loads(line) for line in (run / "resumes.jsonl").read_text().splitlines()]
    assert [entry["changed"] for entry in history] == [{"trainer.steps": [2, 4]}]
    rows = [row for row in read_metrics(run) if "regime/kept_responses" in row]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    # Negative-only kept just the incorrect responses of 8 prompts x G = 2 in the resumed steps too.
    assert all(
        row["regime/kept_responses"] == pytest.approx(16 * (1 - row["reward/accuracy"])) for row in rows
    )
    assert rows[-1]["regime/negative_only"] == 1.0


def test_a_diverging_run_is_rolled_back_counted_and_stopped_resumably(env, tmp_path):
    run = tmp_path / "run"
    result = _train(["trainer.steps=30", "trainer.lr=1e8", f"hydra.run.dir={run}"], env, tmp_path)
    line = _error_line(result)
    assert line.startswith("lrm-fast-train: stopped at step ")
    assert "non-finite sampled logits at lr 1e+08" in line and "3 bad steps in a row" in line
    stop = int(line.split("step ")[1].split(":")[0])
    skipped = [row["step"] for row in read_metrics(run) if row.get("optim/skipped") == 1.0]
    assert len(skipped) == 2 and all(step < stop for step in skipped)  # the third one is the stop
    # Batch n is sampled with the weights after step n - 1: that step's update is undone.
    undone = f"step {skipped[0]}: non-finite sampled logits at lr 1e+08, the update of step {skipped[0] - 1}"
    assert f"{undone} rolled back" in result.stdout + result.stderr
    assert (run / "checkpoints" / f"step_{stop:06d}").is_dir()
    # The checkpoint holds the rolled-back (finite) state: a resume that trains no further finishes.
    resumed = _resume(run, [f"trainer.steps={stop}"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["steps"] == stop


BAD_INPUTS = {
    "data_file": (
        ["data=file", "data.train_path=missing.jsonl"],
        "data.train_path: no such file: missing.jsonl",
    ),
    "model_dir": (["model=pretrained", "model.path={tmp}"], "model.path: {tmp} is not a saved model"),
    "model_missing": (["model=pretrained", "model.path=./nowhere"], "model.path: no such model directory"),
    "model_hub": (
        ["model=pretrained", "model.path=no-org/no-model"],
        "neither a local directory nor in the HF",
    ),
    "non_utf8": (
        ["data=file", "data.train_path={tmp}/latin1.jsonl", "data.heldout_path={tmp}/latin1.jsonl"],
        "{tmp}/latin1.jsonl, line 2: not UTF-8 text (byte 0xe9 at column 17)",
    ),
    "seed": (["seed=-1"], "seed must be >= 0, got -1"),
    "batch": (["trainer.prompts_per_step=300"], "trainer.prompts_per_step=300 is more than the 200 prompts"),
    "range": (["loss.clip_low=1.5"], "loss.clip_low must be in [0, 1), got 1.5"),
}


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_one_line_before_any_model_is_built(env, tmp_path, args, message):
    cache = tmp_path / "cache"
    env = {**env, "LRM_FAST_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    # A Latin-1 "é" on line 2 (the file the non_utf8 case names).
    (tmp_path / "latin1.jsonl").write_bytes(
        b'{"problem": "1+1", "answer": "2"}\n{"problem": "caf\xe9", "answer": "3"}\n'
    )
    result = _train(args, env, tmp_path)
    assert message.replace("{tmp}", str(tmp_path)) in _error_line(result)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not cache.exists()  # no cold start trained or loaded: nothing was built
    outputs = Path(tmp_path / "outputs")
    assert not outputs.exists() or not any(outputs.iterdir())  # no empty run directory left behind
