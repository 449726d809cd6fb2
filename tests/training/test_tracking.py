"""The trackers behind MetricsLogger, in process: W&B through a recording stand-in for the `wandb` module
(its offline files have no public reader), and the rules every tracker shares (the evaluations and their
intervals, the summary, plots, a resume's skipped steps, a failure mid-run, a failure to start).

The real W&B and MLflow runs are checked end to end in tests/cli/test_trackers_cli.py."""

import importlib.machinery
import json
import logging
import math
import os
import subprocess
import sys
import types
from dataclasses import asdict

import numpy as np
import pytest

from lrm_fast.config import EvalProtocol, TrainConfig
from lrm_fast.config.choices import Tracker
from lrm_fast.data.examples import PromptExample
from lrm_fast.evaluation.multi_round import evaluate
from lrm_fast.rollout import Rollout
from lrm_fast.training.metrics import MetricsLogger, read_metrics
from lrm_fast.training.tracking import TrackedRun, TrackerError, open_trackers, read_record

RUN = TrackedRun(
    project="multirun-2026-12-07-10-00-00",
    name="multirun/2026-12-07/10-00-00/3",
    store_dir="/nowhere",
    group="regime=positive",
    tags={"regime": "positive"},
)
ROWS = [
    (1, {"reward/mean": 0.25, "loss/policy": -0.5}),
    (1, {"eval/accuracy": None}),  # the trainer's periodic evaluation row: the score of eval/step_1.json
    (2, {"reward/mean": 0.5, "loss/policy": float("nan")}),
]
SUMMARY = {"cold_start_heldout_accuracy": 0.3, "final_heldout_accuracy": 0.6, "steps": 2, "wall_time_s": 1.5}


# ------------------------------------------------------------------------------------ the stand-in


class RecordingWandb(types.ModuleType):
    """Records every call the tracker makes, in order, as (name, values)."""

    def __init__(self, fail_at_step: int | None = None):
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.calls, self.fail_at_step = [], fail_at_step

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return RecordingRun(self, kwargs["id"] or "new0run1")

    def Image(self, path):
        return ("image", path.rsplit("/", 1)[-1])


class RecordingRun:
    def __init__(self, wandb: RecordingWandb, run_id: str):
        self.wandb, self.id = wandb, run_id
        self.summary = types.SimpleNamespace(update=lambda values: wandb.calls.append(("summary", values)))

    def log(self, data, step):
        if step == self.wandb.fail_at_step:
            raise ConnectionError("the service went away\n(twice)")
        self.wandb.calls.append(("log", step, data))

    def finish(self, exit_code):
        self.wandb.calls.append(("finish", exit_code))


@pytest.fixture
def wandb(monkeypatch):
    module = RecordingWandb()
    monkeypatch.setitem(sys.modules, "wandb", module)
    # The mode is the user's when set; our default, offline, is set through the environment (trackers.py).
    monkeypatch.setenv("WANDB_MODE", "unset by this test")
    monkeypatch.delenv("WANDB_MODE")
    return module


# ------------------------------------------------------------------------------------ the run


class ScriptedBackend:
    """Prompt [i] is answered right (token = its answer) or wrong (answer + 1) at random, by seed."""

    def generate(self, prompts, group_size, params):
        rng = np.random.default_rng(params.seed)
        return [
            Rollout([i], [10 + i + int(rng.random() < 0.5)], [0.0], finished=True)
            for (i,) in prompts
            for _ in range(group_size)
        ]


class DigitTokenizer:
    def batch_decode(self, ids, skip_special_tokens=True):
        return [f"\\boxed{{{row[0]}}}" for row in ids]


def _evaluation(path, seed: int) -> dict:
    """An evaluation file as the trainer writes it (RUN/eval/LABEL.json); returns its summary."""
    examples = [PromptExample(id=f"p{i}", problem=str(i), answer=str(10 + i)) for i in range(8)]
    protocol = EvalProtocol(samples_per_problem=4, max_new_tokens=4, greedy=False)
    prompts = [[i] for i in range(8)]
    return evaluate(ScriptedBackend(), DigitTokenizer(), examples, prompts, protocol, path, seed=seed)


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory) -> dict:
    """Cold start, step 1 and final evaluation files, made once: {label: (path, summary)}."""
    folder = tmp_path_factory.mktemp("eval")
    labels = {"cold_start": 1, "step_1": 2, "final": 3}
    return {
        label: (folder / f"{label}.json", _evaluation(folder / f"{label}.json", s))
        for label, s in labels.items()
    }


@pytest.fixture
def run_dir(tmp_path, evaluations):
    (tmp_path / "eval").mkdir()
    for path, _ in evaluations.values():
        (tmp_path / "eval" / path.name).write_bytes(path.read_bytes())
    return tmp_path


def _interval(evaluations, label: str) -> dict:
    summary = evaluations[label][1]
    return {
        "eval/accuracy": summary["score"],
        "eval/ci_low": summary["ci_low"],
        "eval/ci_high": summary["ci_high"],
    }


def _train(run_dir, trackers, start_step: int = 0, rows=ROWS, evaluations=None):
    """What the trainer does with its logger: begin after `start_step`, log the rows, end."""
    logger = MetricsLogger(run_dir, 2, start_step, True, False, trackers)
    for step, row in rows:
        if "eval/accuracy" in row:
            row = {"eval/accuracy": evaluations[f"step_{step}"][1]["score"]}
        logger.log(step, row)
    logger.close()


# ------------------------------------------------------------------------------------ tests


def test_wandb_gets_the_rows_the_evaluations_the_summary_and_the_plots(wandb, run_dir, evaluations):
    cfg = TrainConfig()
    cfg.trainer.trackers = [Tracker.wandb]
    trackers = open_trackers(cfg.trainer.trackers, run_dir, RUN, cfg)
    _train(run_dir, trackers, evaluations=evaluations)
    trackers.finish(SUMMARY)

    init = wandb.calls[0]
    assert init == (
        "init",
        {
            "dir": str(run_dir),
            "project": RUN.project,
            "name": RUN.name,
            "group": "regime=positive",
            "tags": ["regime=positive"],
            "config": json.loads(json.dumps(asdict(cfg))),
            "id": None,
            "resume": None,
        },
    )
    assert init[1]["config"]["trainer"]["trackers"] == ["wandb"]  # the resolved config, enums as names
    logged = [call for call in wandb.calls[1:] if call[0] == "log"]
    rows = [(step, row) for step, row in ROWS if "eval/accuracy" not in row]
    assert logged[0] == ("log", 0, _interval(evaluations, "cold_start"))  # before the first step
    assert logged[1] == ("log", 1, rows[0][1])
    assert logged[2] == ("log", 1, _interval(evaluations, "step_1"))  # the score with its interval
    assert logged[3][:2] == ("log", 2) and logged[3][2]["reward/mean"] == 0.5
    assert logged[3][2].keys() == rows[1][1].keys() and math.isnan(logged[3][2]["loss/policy"])
    assert logged[4] == ("log", 2, _interval(evaluations, "final"))  # at the last step
    summary = {f"summary/{key}": float(value) for key, value in SUMMARY.items()}
    assert wandb.calls[-3] == ("summary", summary)
    plots = {"plots/score_vs_rounds", "plots/per_problem_accuracy", "plots/pass_at_k"}
    assert wandb.calls[-2][:2] == ("log", 2) and wandb.calls[-2][2].keys() == plots
    assert wandb.calls[-2][2]["plots/pass_at_k"] == ("image", "pass_at_k.png")
    assert wandb.calls[-1] == ("finish", 0)
    assert len(wandb.calls) == 9
    assert read_record(run_dir) == {"run": asdict(RUN), "wandb": {"id": "new0run1"}}
    # metrics.jsonl holds the trainer's rows as they were: the intervals go to the trackers only
    assert [row["step"] for row in read_metrics(run_dir)] == [1, 1, 2]


def test_wandb_is_offline_unless_the_user_chose_a_mode(wandb, tmp_path, monkeypatch):
    open_trackers([Tracker.wandb], tmp_path, RUN, TrainConfig())
    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    open_trackers([Tracker.wandb], tmp_path, RUN, TrainConfig())
    assert os.environ["WANDB_MODE"] == "online"


def test_a_resumed_wandb_run_continues_its_id_and_skips_what_the_killed_run_logged(wandb, run_dir):
    """Killed after logging step 3 (checkpoint at 1): steps 2 and 3 are trained again, but W&B, whose steps
    only grow, gets only what it lacks: the evaluation at step 3 that the killed run never logged."""
    killed = [(1, {"reward/mean": 0.1}), (2, {"reward/mean": 0.2}), (3, {"reward/mean": 0.3})]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, **r}) + "\n" for s, r in killed))
    record = {"run": asdict(RUN), "wandb": {"id": "kept0id1"}}
    (run_dir / "trackers.json").write_text(json.dumps(record))
    other_names = TrackedRun(project="lrm-fast", name="elsewhere", store_dir="/nowhere")
    trackers = open_trackers([Tracker.wandb], run_dir, other_names, TrainConfig())

    again = [
        (2, {"reward/mean": 0.25}),
        (3, {"reward/mean": 0.35}),
        (3, {"eval/accuracy": 0.5}),
        (4, {"reward/mean": 0.4}),
    ]
    logger = MetricsLogger(run_dir, 4, 1, True, False, trackers)
    for step, row in again:
        logger.log(step, row)
    trackers.close()

    init = wandb.calls[0][1]
    assert (init["id"], init["resume"], init["name"]) == ("kept0id1", "allow", RUN.name)  # the recorded names
    step_3_eval = {"eval/accuracy": 0.5}  # this run directory has no eval/step_3.json, so no interval
    assert wandb.calls[1:] == [("log", 3, step_3_eval), ("log", 4, {"reward/mean": 0.4}), ("finish", 1)]
    assert [row["step"] for row in read_metrics(run_dir)] == [1, 2, 3, 3, 4]  # truncated, then appended


def test_a_tracker_that_fails_mid_run_is_dropped_with_one_warning(wandb, run_dir, evaluations, caplog):
    wandb.fail_at_step = 1
    trackers = open_trackers([Tracker.wandb, Tracker.tensorboard], run_dir, RUN, TrainConfig())
    with caplog.at_level(logging.WARNING, logger="lrm_fast.training.tracking"):
        _train(run_dir, trackers, evaluations=evaluations)
        trackers.finish(SUMMARY)
    assert [r.getMessage() for r in caplog.records] == [
        "trainer.trackers: wandb failed (ConnectionError: the service went away (twice)) and is off for "
        "the rest of the run; metrics.jsonl keeps every step"
    ]
    assert [call[0] for call in wandb.calls] == ["init", "log"]  # the cold start, then nothing
    assert len(read_metrics(run_dir)) == len(ROWS)
    assert any((run_dir / "tensorboard").iterdir())  # the other tracker went on


def test_a_tracker_that_cannot_start_is_one_line_naming_it(wandb, run_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(
        TrackerError, match=r"^trainer.trackers: wandb is not installed \(pip install -e '.\[wandb\]'\)$"
    ):
        open_trackers([Tracker.tensorboard, Tracker.wandb], run_dir, RUN, TrainConfig())

    def refuse(**kwargs):
        raise RuntimeError("No API key configured.\nUse `wandb login` to log in.")

    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.raises(TrackerError) as error:
        open_trackers([Tracker.wandb], run_dir, RUN, TrainConfig())
    assert str(error.value) == (
        "trainer.trackers: wandb could not start: RuntimeError: No API key configured. "
        "Use `wandb login` to log in."
    )
    assert not (run_dir / "trackers.json").exists()


def test_tensorboard_gets_the_evaluations_and_the_summary_but_no_plots(run_dir, evaluations, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setattr(
        "lrm_fast.evaluation.report.write_plots", lambda *args: pytest.fail("drew plots for TensorBoard")
    )
    trackers = open_trackers([Tracker.tensorboard], run_dir, RUN, TrainConfig())
    _train(run_dir, trackers, evaluations=evaluations)
    trackers.finish(SUMMARY)
    assert not (run_dir / "trackers.json").exists()  # no ids to keep

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    steps = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert steps["eval/ci_low"] == steps["eval/accuracy"] == [0, 1, 2]
    assert steps["loss/policy"] == [1, 2] and steps["summary/final_heldout_accuracy"] == [2]
    assert events.Tags()["tensors"] == ["config/text_summary"]


def test_the_base_install_needs_neither_wandb_nor_mlflow():
    """Both are optional extras: the entry point and the trainer import without them."""
    script = (
        "import sys\n"
        "sys.modules['wandb'] = sys.modules['mlflow'] = None  # as if not installed\n"
        "import lrm_fast.cli.train, lrm_fast.training.trainer\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
