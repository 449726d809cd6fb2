"""Trainer runs inside the test process: the GRPOTrainer object itself on the tiny model, without a launch
(a launch costs 10-18 s here, most of it imports), small enough that dozens of runs fit in minutes.

`quick_config` is a run of the built-in task with two- and three-operand problems, a short cold start
(cached in the given folder), 2 prompts x 4 responses per step and 4 held-out problems; `train` runs it in
a directory; `resumed` copies a finished run back to one of its checkpoints and continues it from there,
as a run killed after that checkpoint would be.
"""

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from lrm_fast.config import TrainConfig, validate
from lrm_fast.runtime import DistInfo
from lrm_fast.training.assembly import load_run_data
from lrm_fast.training.metrics import read_metrics
from lrm_fast.training.tracking import TrackedRun, open_trackers
from lrm_fast.training.trainer import GRPOTrainer

# Keys whose values are wall-clock measurements, never equal between two runs.
TIMING_PREFIXES = ("time/", "perf/", "async/overlap_s", "async/sampling_s", "async/push_s")


def quick_config(cache_dir: Path, overrides: dict | None = None) -> TrainConfig:
    """A small, fast run; `overrides` maps dotted keys ("loss.packing") to values."""
    cfg = TrainConfig()
    settings = {
        "cold_start.cache_dir": str(cache_dir),
        "cold_start.steps": 150,
        "cold_start.batch_size": 32,
        "cold_start.warmup_steps": 10,
        "cold_start.num_problems": 2000,
        "data.difficulty.max_operands": 3,
        "data.train_problems": 200,
        "rollout.group_size": 4,
        "rollout.max_new_tokens": 32,
        "eval.problems": 4,
        "eval.max_new_tokens": 32,
        "loss.entropy_coef": 0.01,
        "trainer.steps": 2,
        "trainer.prompts_per_step": 2,
        "trainer.lr": 3e-4,
        "trainer.warmup_steps": 1,
        "trainer.checkpoint_every": 1,
        "trainer.keep_checkpoints": 3,
        "trainer.num_threads": 1,
        "trainer.update_threads": 1,
        "trainer.progress_bar": False,
        **(overrides or {}),
    }
    for key, value in settings.items():
        *path, name = key.split(".")
        section = cfg
        for part in path:
            section = getattr(section, part)
        setattr(section, name, value)
    validate(cfg)
    return cfg


@dataclass
class Run:
    rows: list[dict]  # metrics.jsonl
    summary: dict
    # Optimizer steps taken before each batch was requested, and before the update that trained it, by
    # batch index: counted by a hook on the optimizer's steps, apart from the trainer's own bookkeeping.
    requested_at: dict[int, int] = field(default_factory=dict)
    trained_at: dict[int, int] = field(default_factory=dict)


def train(cfg: TrainConfig, run_dir: Path, setup=None) -> Run:
    """Run `cfg` to its end in `run_dir` (resuming from a checkpoint there, if any). `setup(trainer)` runs
    on the built trainer before training (to replace or instrument a part)."""
    torch.set_flush_denormal(True)
    torch.set_num_threads(max(cfg.trainer.num_threads, 1))
    dist = DistInfo(0, 1, torch.device("cpu"))
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    names = TrackedRun(project="lrm-fast-tests", name=str(run_dir), store_dir=str(run_dir))
    trackers = open_trackers(cfg.trainer.trackers, run_dir, names, cfg)
    run = Run([], {})
    try:
        trainer = GRPOTrainer(cfg, run_dir, dist, load_run_data(cfg, dist.world_size), trackers)
        try:
            _count_optimizer_steps(trainer, run)
            if setup is not None:
                setup(trainer)
            run.summary = trainer.train()
        finally:
            trainer.close()
        trackers.finish(run.summary)
    finally:
        trackers.close()
    run.rows = read_metrics(run_dir)
    return run


def _count_optimizer_steps(trainer: GRPOTrainer, run: Run) -> None:
    """Count the optimizer steps the updates take (not the step with lr 0 by which a checkpoint of a
    still-fresh optimizer creates its state: lrm_fast/training/checkpoint.py)."""
    taken, updating = [0], [False]

    def count(optimizer, args, kwargs):
        taken[0] += updating[0]

    trainer.optimizer.register_step_post_hook(count)
    update = trainer._guarded_update

    def noted_update(samples, version):
        run.trained_at[trainer.step_count] = taken[0]
        updating[0] = True
        try:
            return update(samples, version)
        finally:
            updating[0] = False

    trainer._guarded_update = noted_update
    if trainer.pipeline is not None:
        request = trainer.pipeline.request

        def noted_request(req, model):
            run.requested_at[req.index] = taken[0]
            return request(req, model)

        trainer.pipeline.request = noted_request


def resumed(finished: Path, at_step: int, run_dir: Path, cfg: TrainConfig) -> Run:
    """`finished`'s run copied to `run_dir` as it was at its checkpoint of `at_step`, then continued."""
    shutil.copytree(finished, run_dir)
    for checkpoint in (run_dir / "checkpoints").iterdir():
        if int(checkpoint.name.removeprefix("step_")) > at_step:
            shutil.rmtree(checkpoint)
    for name in ("final_model", "summary.json"):
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return train(cfg, run_dir)


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(TIMING_PREFIXES)} for row in rows]


def assert_same_rows(rows: list[dict], expected: list[dict]) -> None:
    """The same steps with the same keys and, timings aside, the same values to 1e-6 relative: counts,
    rewards and lengths equal, floats up to the last bits that two processes' kernels may sum in another
    order (the sampler's log-probs differ by about 1e-9 between the trainer's and the rollout process)."""
    rows, expected = without_timings(rows), without_timings(expected)
    assert [sorted(row) for row in rows] == [sorted(row) for row in expected]
    for row, other in zip(rows, expected, strict=True):
        assert row == pytest.approx(other, rel=1e-6, abs=1e-8), row["step"]
