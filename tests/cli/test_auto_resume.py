"""trainer.resume=auto: which launches keep the finished run in their directory as it is, which continue it
and which are refused (the launch itself is tested end to end in tests/cli/test_train_cli.py: a sweep
started again, a killed run continued)."""

import json

import pytest
from omegaconf import OmegaConf

import lrm_fast.cli.resume as resume
from lrm_fast.cli.launch import finished_run
from lrm_fast.config import AUTO_RESUME, TrainConfig


def _launch(resume_value=AUTO_RESUME, **trainer):
    cfg = OmegaConf.structured(TrainConfig)
    cfg.trainer.resume = resume_value
    for key, value in trainer.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return cfg


@pytest.fixture
def finished(tmp_path, monkeypatch):
    # What the launch would compose without its overrides: the schema's defaults (outside Hydra here).
    monkeypatch.setattr(resume, "_defaults_of_this_call", lambda: OmegaConf.structured(TrainConfig))
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(_launch(trainer__steps=4)))
    return tmp_path


def test_a_started_run_is_continued_and_a_finished_one_kept(finished):
    assert finished_run("t", _launch(trainer__steps=4), finished) is None  # no summary yet: continued
    (finished / "summary.json").write_text(json.dumps({"steps": 4}))
    assert finished_run("t", _launch(trainer__steps=4), finished) == {"steps": 4}
    assert finished_run("t", _launch(trainer__steps=4, trainer__progress_bar=False), finished) == {"steps": 4}
    assert finished_run("t", _launch(None, trainer__steps=4), finished) is None  # without auto


def test_a_finished_run_launched_again_with_other_cpu_threads_is_kept(finished):
    # A sweep restarted on fewer cores, or two sweeps sharing them, sets the thread counts anew.
    (finished / "summary.json").write_text(json.dumps({"steps": 4}))
    launch = _launch(trainer__steps=4, trainer__num_threads=1, trainer__update_threads=1)
    assert finished_run("t", launch, finished) == {"steps": 4}


def test_a_resume_records_new_thread_counts_and_applies_them(finished):
    merged, changes = resume.resumed_config(_launch(trainer__steps=4, trainer__num_threads=1), finished)
    assert changes == {"trainer.num_threads": [0, 1]}
    assert merged.trainer.num_threads == 1 and merged.trainer.update_threads == 0


def test_a_finished_run_asked_for_other_steps_is_continued(finished):
    (finished / "summary.json").write_text(json.dumps({"steps": 4}))
    assert finished_run("t", _launch(trainer__steps=6), finished) is None


def test_a_finished_run_of_other_settings_is_refused_not_kept(finished, capsys):
    (finished / "summary.json").write_text(json.dumps({"steps": 4}))
    with pytest.raises(SystemExit, match=r"cannot change seed=1 \(the run has 0\)"):
        finished_run("t", _launch(trainer__steps=4, seed=1), finished)
    assert (finished / "summary.json").exists()  # nothing touched
