"""Rollout workers apart from the trainer ranks, end to end: torchrun with 2 gloo FSDP2 ranks and the worker
trainer rank 0 starts. Each rank counts its own batches' staleness from the samples themselves (the policy
version whose log-probs equal the sampler's), and a run killed at a trainer rank or at the worker resumes
equal to an uninterrupted one."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from processes import gone
from trainer_fixtures import QUICK

from lrm_fast.training.metrics import read_metrics

# Two optimizer steps per rollout batch, so the bound counts optimizer steps, not batches (lag 1 batch).
ASYNC = [
    "trainer.max_staleness=2",
    "trainer.mini_batches=2",
    "trainer.steps=4",
    "trainer.checkpoint_every=2",
]
KEYS = ("reward/mean", "loss/policy", "optim/grad_norm", "rollout/prob_ratio", "async/staleness")

# Runs the trainer; on every rank, before each update, finds the policy version that sampled the batch by
# recomputing the sampler's log-probs under each version the rank has held, and appends what it found to
# RECORD/rank{r}.jsonl. KILL=rank:step kills that trainer rank before that step's update; KILL=worker:step
# kills the rollout worker there (from rank 0).
HOOK = textwrap.dedent(
    """
    import json, os, signal
    from pathlib import Path

    import torch
    from torch.distributed.tensor import DTensor

    from lrm_fast.batching import micro_batches as M
    from lrm_fast.cli.train import main
    from lrm_fast.kernels import token_logprobs
    from lrm_fast.model.causal_lm import build_model
    from lrm_fast.training.trainer import GRPOTrainer
    from lrm_fast.training.update import response_logits

    update = GRPOTrainer._guarded_update
    history = {}  # optimizer steps -> the whole policy after them

    def sampled_at(model, samples, temperature):
        copy = build_model(model.config).eval()
        batch = M.collate(samples, False)
        sampler = M.sampler_logprobs(samples)
        found = []
        for steps, state in history.items():
            copy.load_state_dict(state)
            with torch.no_grad():
                logits = response_logits(copy, batch)
                logprobs = token_logprobs(logits, batch.targets, temperature=temperature)
            if (logprobs - sampler).abs().max().item() < 1e-4:
                found.append(steps)
        return found

    def counted_update(self, samples, version):
        state = self.model.state_dict()
        history[self.guard.optimizer_steps] = {
            k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone() for k, v in state.items()
        }
        who, _, step = os.environ.get("KILL", "none:0").partition(":")
        if int(step) == self.step_count:
            if who == str(self.dist.rank):
                os.kill(os.getpid(), signal.SIGKILL)
            if who == "worker" and self.dist.is_main:
                os.kill(self.pipeline.pids[0], signal.SIGKILL)
        record = {
            "step": self.step_count,
            "optimizer_steps": self.guard.optimizer_steps,
            "sampled_at": sampled_at(self.model, samples, self.cfg.rollout.temperature),
            "prompts": sorted({tuple(s.prompt_ids) for s in samples}),
        }
        with open(Path(os.environ["RECORD"]) / f"rank{self.dist.rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\\n")
        return update(self, samples, version)

    if __name__ == "__main__":  # the worker (a fork server's child) imports this module too
        GRPOTrainer._guarded_update = counted_update
        main()
    """
)


@pytest.fixture(scope="module")
def hook(tmp_path_factory):
    path = tmp_path_factory.mktemp("hook") / "counted_train.py"
    path.write_text(HOOK)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "LRM_FAST_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(hook, env, run_dir, record, *args, kill=None):
    record.mkdir(parents=True, exist_ok=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = [*torchrun, str(hook), *QUICK, *ASYNC, f"hydra.run.dir={run_dir}", *args]
    env = {**env, "RECORD": str(record), **({"KILL": kill} if kill else {})}
    return subprocess.run(command, env=env, cwd=run_dir.parent, capture_output=True, text=True, timeout=600)


def _steps(run_dir):
    return [{k: row.get(k) for k in ("step", *KEYS)} for row in read_metrics(run_dir) if "loss/policy" in row]


def _records(record, rank):
    return [json.loads(line) for line in (record / f"rank{rank}.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_bound_holds_per_rank_and_killed_runs_resume_equal(hook, env, tmp_path):
    """One test, so that the uninterrupted run is made once (xdist makes a module fixture per worker)."""
    reference, record = tmp_path / "reference", tmp_path / "reference_record"
    result = _run(hook, env, reference, record)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_the_bound_per_rank(reference, record)
    _kill_a_rank_then_the_worker_and_resume(reference, hook, env, tmp_path)


def _check_the_bound_per_rank(run, record):
    ranks = [_records(record, rank) for rank in range(2)]
    for rows in ranks:
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        for row in rows:
            assert len(row["sampled_at"]) == 1, row  # exactly one version of the policy sampled it
        staleness = [row["optimizer_steps"] - row["sampled_at"][0] for row in rows]
        # Batch 1 from the start; every later one from the weights one batch (2 optimizer steps) back.
        assert staleness == [0, 2, 2, 2]
    for first, second in zip(*ranks, strict=True):
        prompts = [{tuple(p) for p in rows["prompts"]} for rows in (first, second)]
        assert prompts[0] and prompts[1] and not prompts[0] & prompts[1]  # each rank its own share
    logged = [row["async/staleness"] for row in read_metrics(run) if "loss/policy" in row]
    assert logged == [0.0, 2.0, 2.0, 2.0]
    pushes = [row["async/push_bytes"] for row in read_metrics(run) if "loss/policy" in row]
    assert all(p > 0 for p in pushes)  # every step pushes the weights of its last update


def _kill_a_rank_then_the_worker_and_resume(reference, hook, env, tmp_path):
    """SIGKILL of trainer rank 1 in step 3 (after the step-2 checkpoint): torchrun ends rank 0, and the worker
    ends with it. The resumed run loses its worker in step 3: rank 0 names it and the run stops. Resumed
    again, it logs the steps of an uninterrupted run."""
    run = tmp_path / "run"
    killed = _run(hook, env, run, tmp_path / "record", kill="1:3")
    assert killed.returncode != 0
    assert gone(_worker_pid(killed.stdout))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002"]

    resume = f"trainer.resume={run}"
    lost = _run(hook, env, tmp_path / "log1", tmp_path / "record", resume, kill="worker:3")
    assert lost.returncode != 0
    named = re.search(r"rollout worker 1 \(pid \d+\): the rollout process exited", lost.stderr)
    assert named, lost.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002"]

    resumed = _run(hook, env, tmp_path / "log2", tmp_path / "record", resume)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _steps(run) == _steps(reference)


def _worker_pid(stdout: str) -> int:
    return int(re.search(r"\[async\] rollout process (\d+)", stdout).group(1))
