"""Every config file composes into a valid typed TrainConfig; bad values are refused by name."""

from dataclasses import replace
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from lrm_fast.config import TrainConfig, register_configs, validate

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUP_OPTIONS = sorted(
    (group.name, option.stem) for group in CONF.iterdir() if group.is_dir() for option in group.glob("*.yaml")
)
REQUIRED = {("model", "pretrained"): ["model.path=/models/x"], ("data", "file"): ["data.train_path=x.jsonl"]}


def _compose(overrides: list[str]) -> TrainConfig:
    register_configs()
    with initialize_config_module(config_module="lrm_fast.conf", version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=overrides))


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_config_file_composes(group, option):
    cfg = _compose([f"{group}={option}", *REQUIRED.get((group, option), [])])
    assert isinstance(cfg, TrainConfig)
    if (group, option) != ("data", "file"):  # its file does not exist here
        validate(cfg)


def test_default_config_is_the_embedded_task():
    cfg = _compose([])
    validate(cfg)
    assert (cfg.model.name, cfg.data.name, cfg.rollout.backend) == ("tiny", "arithmetic", "hf")
    assert cfg.trainer.prompts_per_step * cfg.rollout.group_size == 256


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rollout": {"group_size": 0}}, "rollout.group_size must be > 0"),
        ({"loss": {"aggregation": "sum"}}, "loss.aggregation must be one of"),
        ({"rollout": {"top_p": 1.5}}, r"rollout.top_p must be in \(0, 1\]"),
        ({"trainer": {"resume": "/nonexistent/run"}}, "trainer.resume: no such run directory"),
    ],
    ids=["group_size", "aggregation", "top_p", "resume_dir"],
)
def test_validate_names_the_bad_value(change, message):
    cfg = _compose([])
    for section, values in change.items():
        setattr(cfg, section, replace(getattr(cfg, section), **values))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        validate(cfg)
