"""`lrm-fast-stages`: the staged context extension in one command, each stage from the one before, a
report across them, and the command started again keeping what finished."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from lrm_fast.cli.stages import LONG_STAGES, parse_args, stage_command
from lrm_fast.training.metrics import read_metrics

# Small stages: a short cold start (its responses often run to the limit, which the truncation ratio sees),
# one step each of 2 prompts x 2 responses (the stages' own group sizes and limits: tests/config).
QUICK = [
    "rollout.group_size=2",
    "cold_start.steps=20",
    "cold_start.num_problems=500",
    "cold_start.warmup_steps=5",
    "data.train_problems=100",
    "trainer.steps=1",
    "trainer.prompts_per_step=2",
    "trainer.num_threads=1",
    "trainer.progress_bar=false",
    "eval.problems=4",
]


def _stages(out, args, env):
    command = [sys.executable, "-m", "lrm_fast.cli.stages", str(out), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_three_stages_chain_through_final_model_and_report_across_them(tmp_path):
    env = {**os.environ, "LRM_FAST_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "stages"
    result = _stages(out, QUICK, env)
    assert result.returncode == 0, result.stderr[-3000:]
    configs = [yaml.safe_load((out / stage / "config.yaml").read_text()) for stage in LONG_STAGES]
    limits = [c["rollout"]["max_new_tokens"] for c in configs]
    assert [limit / limits[0] for limit in limits] == [1, 2, 3]  # the study's 8 : 16 : 24
    assert [c["eval"]["max_new_tokens"] for c in configs] == limits
    assert configs[0]["model"]["name"] == "tiny" and configs[0]["data"]["name"] == "long_arithmetic"
    for previous, config in zip(LONG_STAGES, configs[1:], strict=False):
        assert config["model"] | {"path": None} == configs[0]["model"] | {"name": "pretrained", "path": None}
        assert config["model"]["path"] == str(out / previous / "final_model")
        assert config["data"] == configs[0]["data"]
    for stage in LONG_STAGES:
        rows = [row for row in read_metrics(out / stage) if "length/truncated_ratio" in row]
        assert len(rows) == 1 and 0 <= rows[0]["length/truncated_ratio"] <= 1
    report = json.loads((out / "report" / "report.json").read_text())
    assert len(report["configurations"]) == 3
    table = (out / "report" / "report.md").read_text()
    assert "truncated %" in table and "all-wrong %" in table and "len correct first → last" in table

    # Started again: every stage is kept as it is and the report is written again.
    metrics = {stage: (out / stage / "metrics.jsonl").read_bytes() for stage in LONG_STAGES}
    again = _stages(out, QUICK, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("holds a finished run; kept") == 3
    assert {stage: (out / stage / "metrics.jsonl").read_bytes() for stage in LONG_STAGES} == metrics


def test_each_stage_after_the_first_starts_from_the_previous_final_model(tmp_path):
    stages = ["a", "b", "c"]
    first, third = (stage_command(tmp_path, stages, i, ["seed=1"]) for i in (0, 2))
    assert first[-4:] == ["+experiment=a", f"hydra.run.dir={tmp_path / 'a'}", "trainer.resume=auto", "seed=1"]
    assert f"model.path={tmp_path / 'b' / 'final_model'}" in third and third[-1] == "seed=1"
    assert not any(arg.startswith("model.path") for arg in first)


@pytest.mark.parametrize("override", ["model.path=/x", "hydra.run.dir=/x", "trainer.resume=/x"])
def test_keys_the_command_sets_itself_are_refused(override, capsys):
    with pytest.raises(SystemExit):
        parse_args(["out", override])
    assert f"lrm-fast-stages sets {override.split('=')[0]} itself" in capsys.readouterr().err
