"""trainer.resume=auto: which launches keep the run in their directory as it is (the launch itself is
tested end to end in tests/cli/test_train_cli.py: a sweep started again, a killed run continued)."""

import json

from omegaconf import OmegaConf

from lrm_fast.cli.launch import finished_run
from lrm_fast.config import AUTO_RESUME, TrainConfig


def _launch(resume, steps):
    cfg = OmegaConf.structured(TrainConfig)
    cfg.trainer.resume, cfg.trainer.steps = resume, steps
    return cfg


def test_only_a_finished_run_asked_for_its_own_steps_is_kept(tmp_path):
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(_launch(AUTO_RESUME, 4)))
    assert finished_run(_launch(AUTO_RESUME, 4), tmp_path) is None  # started, not finished: continued
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 4}))
    assert finished_run(_launch(AUTO_RESUME, 4), tmp_path) == {"steps": 4}
    assert finished_run(_launch(AUTO_RESUME, 6), tmp_path) is None  # train longer: a resume
    assert finished_run(_launch(None, 4), tmp_path) is None  # without auto, the launch refuses the folder
    assert finished_run(_launch(AUTO_RESUME, 4), tmp_path / "elsewhere") is None
