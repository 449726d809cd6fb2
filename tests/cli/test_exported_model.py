"""A trained run's final_model/ is the run's model as anyone else loads it: AutoTokenizer gives the run's
token ids (responses with spaces included), and `lrm-fast-eval` with the run's evaluation settings gives the
trainer's own final evaluation, problem by problem."""

import json
import os
import subprocess
import sys

import pytest
from inprocess import quick_config, train
from transformers import AutoTokenizer

from lrm_fast.data.tokenizer import build_tokenizer

pytestmark = pytest.mark.slow  # a run, then a launch of lrm-fast-eval


@pytest.fixture(scope="module")
def finished(cold_start_cache, tmp_path_factory):
    """A short run on the built-in task's default settings (lrm-fast-eval's builtin:arithmetic is the
    held-out split at those settings)."""
    cfg = quick_config(
        cold_start_cache,
        {"data.difficulty.max_operands": 4, "eval.problems": 16, "eval.max_new_tokens": 48},
    )
    run_dir = tmp_path_factory.mktemp("run") / "run"
    return cfg, run_dir, train(cfg, run_dir)


def _yaml(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _final_evaluation(path) -> list[dict]:
    (benchmark,) = json.loads(path.read_text())["benchmarks"].values()
    return benchmark["problems"]


def test_the_exported_tokenizer_gives_the_runs_ids(finished):
    _, run_dir, _ = finished
    loaded = AutoTokenizer.from_pretrained(run_dir / "final_model", local_files_only=True)
    built = build_tokenizer()
    texts = [s["text"] for p in _final_evaluation(run_dir / "eval" / "final.json") for s in p["samples"]]
    texts += ["<|user|>1 + 2 = 3\n<|im_end|><|assistant|><think> 1+2=3, 3=3</think>\\boxed{3}"]
    assert any(" " in text for text in texts)  # the teacher's optional spaces survive
    for text in texts:
        assert loaded(text).input_ids == built(text).input_ids, text


def test_lrm_fast_eval_repeats_the_trainers_final_evaluation(finished, tmp_path):
    cfg, run_dir, run = finished
    ev = cfg.eval
    settings = {
        "benchmarks.0.problems": ev.problems,
        "benchmarks.0.samples_per_problem": ev.samples_per_problem,
        "benchmarks.0.max_new_tokens": ev.max_new_tokens,
        "temperature": ev.temperature,
        "top_p": ev.top_p,
        "greedy": ev.greedy,
        "max_rounds": ev.max_rounds,
        "target_ci_width": ev.target_ci_width,
        "think_format": ev.think_format,
        "seed": cfg.seed,
        "num_threads": cfg.trainer.num_threads,
        "generation_batch_size": cfg.rollout.generation_batch_size,
    }
    command = [
        sys.executable,
        "-m",
        "lrm_fast.cli.eval",
        f"model.path={run_dir / 'final_model'}",
        f"output_dir={tmp_path / 'eval'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        *(f"{key}={_yaml(value)}" for key, value in settings.items()),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ours = _final_evaluation(tmp_path / "eval" / "results.json")
    trainers = _final_evaluation(run_dir / "eval" / "final.json")
    assert [p["id"] for p in ours] == [p["id"] for p in trainers]
    for mine, theirs in zip(ours, trainers, strict=True):
        assert [s["text"] for s in mine["samples"]] == [s["text"] for s in theirs["samples"]]
    correct = sum(s["correct"] for p in ours for s in p["samples"]) / sum(len(p["samples"]) for p in ours)
    assert correct == pytest.approx(run.summary["final_heldout_accuracy"])
