"""Dynamic sampling end to end: a run SIGKILLed between two refill rounds of a step resumes to the
metrics of an uninterrupted run, and a token budget ends a run at the step that reaches it."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from trainer_fixtures import QUICK

from lrm_fast.training.metrics import read_metrics

DYNAMIC = ["sampling=dynamic", "sampling.max_rounds=3", "trainer.checkpoint_every=2", "trainer.steps=4"]
KEYS = ("reward/mean", "loss/policy", "optim/grad_norm", "sampling/rounds", "rollout/generated_tokens_total")

# Runs the trainer and kills its own process when step 3 starts its second sampling round: after the
# step-2 checkpoint, in the middle of a refill.
KILL_IN_A_REFILL = textwrap.dedent(
    """
    import os, signal, sys
    from lrm_fast.cli.train import main
    from lrm_fast.training.trainer import GRPOTrainer

    rollouts, rounds = GRPOTrainer._rollouts, {}

    def rollouts_then_die(self, examples, params):
        rounds[self.step_count] = rounds.get(self.step_count, 0) + 1
        if self.step_count == 3 and rounds[3] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return rollouts(self, examples, params)

    GRPOTrainer._rollouts = rollouts_then_die
    main()
    """
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "LRM_FAST_CACHE": str(cache), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}


def _run(command, env, cwd):
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def _train(args, env, cwd):
    return _run([sys.executable, "-m", "lrm_fast.cli.train", *QUICK, *DYNAMIC, *args], env, cwd)


def _steps(run_dir):
    return [{k: row[k] for k in ("step", *KEYS)} for row in read_metrics(run_dir) if "loss/policy" in row]


@pytest.mark.slow
def test_resume_in_the_middle_of_a_refill_matches_an_uninterrupted_run(env, tmp_path):
    reference = _train([f"hydra.run.dir={tmp_path}/reference"], env, tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = _steps(tmp_path / "reference")
    assert expected[2]["sampling/rounds"] >= 2  # step 3 refills: the kill below lands inside it

    script = tmp_path / "kill_in_a_refill.py"
    script.write_text(KILL_IN_A_REFILL)
    run = tmp_path / "killed"
    killed = _run([sys.executable, str(script), *QUICK, *DYNAMIC, f"hydra.run.dir={run}"], env, tmp_path)
    assert killed.returncode == -9
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002"]
    assert [row["step"] for row in _steps(run)] == [1, 2]  # step 3 died before it was logged

    resumed = _train([f"trainer.resume={run}", f"hydra.run.dir={tmp_path}/resume_log"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _steps(run) == expected
    summary = json.loads((run / "summary.json").read_text())
    assert summary["generated_tokens"] == expected[-1]["rollout/generated_tokens_total"]


@pytest.mark.slow
def test_a_token_budget_ends_the_run_at_the_step_that_reaches_it(env, tmp_path):
    result = _train(
        ["trainer.steps=50", "trainer.token_budget=1", f"hydra.run.dir={tmp_path}/run"], env, tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _steps(tmp_path / "run")
    assert [r["step"] for r in rows] == [1] and rows[0]["rollout/generated_tokens_total"] > 1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 1
