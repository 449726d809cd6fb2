"""`lrm-fast-train` end to end on the embedded task, as a user runs it (subprocesses, tiny settings)."""

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

DETERMINISTIC_KEYS = (
    "reward/mean",
    "zero_adv/ratio",
    "length/response_mean",
    "loss/policy",
    "optim/grad_norm",
    "loss/entropy",
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "LRM_FAST_CACHE": str(cache), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}


def _train(args, env, cwd, flags=(), **kwargs):
    command = [sys.executable, "-m", "lrm_fast.cli.train", *flags, *QUICK, *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600, **kwargs)


def _metrics(run_dir: Path) -> list[dict]:
    return [
        {k: row[k] for k in ("step", *DETERMINISTIC_KEYS)}
        for row in read_metrics(run_dir)
        if "loss/policy" in row
    ]


@pytest.mark.slow
def test_train_writes_metrics_summary_and_checkpoints(env, tmp_path):
    result = _train([f"hydra.run.dir={tmp_path}/run"], env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert {"cold_start_heldout_accuracy", "final_heldout_accuracy", "wall_time_s"} <= summary.keys()
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["optim/grad_norm"] > 0 for r in rows)
    assert {"zero_adv/all_correct", "zero_adv/all_wrong", "time/rollout_s", "perf/tokens_per_s"} <= rows[
        0
    ].keys()
    assert (run / "config.yaml").exists() and any((run / "tensorboard").iterdir())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002", "step_000004"]


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(env, tmp_path):
    steps = ["trainer.steps=6", "trainer.checkpoint_every=2"]
    reference = _train([*steps, f"hydra.run.dir={tmp_path}/reference"], env, tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]

    run = tmp_path / "killed"
    command = [sys.executable, "-m", "lrm_fast.cli.train", *QUICK, *steps, f"hydra.run.dir={run}"]
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while (
        not (run / "checkpoints" / "step_000004").exists()
        and process.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (run / "checkpoints" / "step_000004").exists() and not (run / "summary.json").exists()

    # The same command with trainer.resume=auto continues the run in its own directory.
    resumed = _train([*steps, "trainer.resume=auto", f"hydra.run.dir={run}"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _metrics(run) == _metrics(tmp_path / "reference")
    summary = json.loads((run / "summary.json").read_text())
    expected = json.loads((tmp_path / "reference" / "summary.json").read_text())
    assert summary["final_heldout_accuracy"] == expected["final_heldout_accuracy"]


@pytest.mark.slow
def test_torch_and_triton_loss_backends_give_the_same_run(env, tmp_path):
    runs = {}
    variants = {"torch": ["loss.backend=torch"], "triton": ["loss.backend=triton"]}
    variants["fused_head"] = ["loss.backend=torch", "loss.fused_head=true"]
    for name, args in variants.items():
        result = _train([*args, f"hydra.run.dir={tmp_path}/{name}"], env, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = _metrics(tmp_path / name)
    for other in ("triton", "fused_head"):
        for torch_row, other_row in zip(runs["torch"], runs[other], strict=True):
            for key in DETERMINISTIC_KEYS:
                assert other_row[key] == pytest.approx(torch_row[key], rel=1e-4, abs=1e-6), (other, key)


@pytest.mark.slow
def test_multirun_sweeps_seeds_with_the_basic_launcher(env, tmp_path):
    sweep = ["seed=0,1", "trainer.steps=2", f"hydra.sweep.dir={tmp_path}/sweep", "trainer.resume=auto"]
    result = _train(sweep, env, tmp_path, flags=["-m"])
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = sorted((tmp_path / "sweep").glob("*/summary.json"))
    assert len(summaries) == 2
    first, second = (read_metrics(p.parent) for p in summaries)
    assert (
        first[0]["reward/mean"] != second[0]["reward/mean"]
        or first[0]["loss/policy"] != second[0]["loss/policy"]
    )
    # Started again, the sweep keeps its finished runs as they are.
    files = {p: p.read_bytes() for p in (tmp_path / "sweep").glob("*/*") if p.is_file()}
    again = _train(sweep, env, tmp_path, flags=["-m"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("holds a finished run; kept (trainer.resume=auto)") == 2
    assert {p: p.read_bytes() for p in files} == files


BAD_CONFIGS = {
    "unknown_key": (["trainer.stepz=3"], "stepz"),
    "wrong_type": (["trainer.steps=many"], "trainer.steps"),
    "unknown_group_option": (["loss=ppo"], "loss"),
    "missing_data_file": (
        ["data=file", "data.train_path=/nonexistent/train.jsonl"],
        "/nonexistent/train.jsonl",
    ),
    "bad_choice": (["loss.aggregation=token_product"], "loss.aggregation"),
}


@pytest.mark.parametrize(("overrides", "named"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_configuration_fails_before_any_work(env, tmp_path, overrides, named):
    result = _train(
        [*overrides, f"hydra.run.dir={tmp_path}/run"], {**env, "LRM_FAST_CACHE": str(tmp_path)}, tmp_path
    )
    assert result.returncode != 0
    assert named in result.stderr
    assert not (tmp_path / "cold_start").exists()  # failed before building anything


@pytest.mark.slow
@pytest.mark.parametrize(
    "lever",
    [["regime=negative"], ["reward=rlr"], ["injection=osi"], ["injection=osi_luffy"]],
    ids=["regime_negative", "rlr", "injection_osi", "injection_osi_luffy"],
)
def test_study_levers_run_and_log_their_metrics(env, tmp_path, lever):
    result = _train(
        [*lever, "regime.drop_zero_variance=true", f"hydra.run.dir={tmp_path}/run"], env, tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [r for r in read_metrics(tmp_path / "run") if "loss/policy" in r]
    keys = {
        "regime/kept_responses",
        "injection/responses",
        "reward/rlr_shaped_groups",
        "zero_adv/ratio_before",
    }
    assert keys <= rows[0].keys()
    assert {"length/correct_mean", "length/incorrect_mean", "batch/forwarded_responses"} <= rows[0].keys()
    responses = 8 * 4
    if lever == ["regime=negative"]:
        # Only incorrect responses are kept; all-wrong groups are dropped before the forward pass.
        assert all(r["regime/kept_responses"] == round(responses * (1 - r["reward/accuracy"])) for r in rows)
        assert all(r["batch/forwarded_responses"] <= r["regime/kept_responses"] for r in rows)
    if lever[0].startswith("injection"):
        # The cold start here is weak: most groups are all wrong, and every one of them gets a solution.
        assert all(r["injection/responses"] == 8 * r["zero_adv/all_wrong_before"] for r in rows)
        assert all(r["zero_adv/all_wrong"] == 0 < r["zero_adv/all_wrong_before"] for r in rows)
    if lever == ["reward=rlr"]:
        assert all(r["zero_adv/all_correct"] <= r["zero_adv/all_correct_before"] for r in rows)
