"""The real-model configs (conf/model/): each composes, validates and names its checkpoint's hub id, and
a checkpoint missing from the HF cache fails with the download hint instead of being fetched."""

import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import try_to_load_from_cache
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from lrm_fast.cli.configs import register_configs
from lrm_fast.config import TrainConfig, validate
from lrm_fast.training.assembly import build_policy

MODEL_CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
HUB_IDS = {
    "r1_distill_qwen_1.5b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",  # the study's model
    "r1_distill_qwen_7b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
    "qwen2.5_math_1.5b": "Qwen/Qwen2.5-Math-1.5B",  # base models, for zero-RL
    "qwen2.5_math_7b": "Qwen/Qwen2.5-Math-7B",
}


def _compose(overrides: list[str]) -> TrainConfig:
    register_configs()
    with initialize_config_module(config_module="lrm_fast.conf", version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=overrides))


def test_every_real_model_config_is_checked_here():
    # A new file in conf/model/ must get its hub id below, or this test names it.
    real = {path.stem for path in MODEL_CONF.glob("*.yaml")} - {"tiny", "tiny_long", "pretrained"}
    assert real == set(HUB_IDS)


@pytest.mark.parametrize("option", sorted(HUB_IDS))
def test_real_model_config_loads_its_hub_id(option):
    cfg = _compose([f"model={option}"])
    validate(cfg)
    # name=pretrained: build.py loads model.path (hub id or local directory) with local_files_only.
    assert (cfg.model.name, cfg.model.path) == ("pretrained", HUB_IDS[option])
    assert (cfg.model.attn_implementation, cfg.model.activation_checkpointing) == ("sdpa", True)
    usage = (MODEL_CONF / f"{option}.yaml").read_text().splitlines()[0]
    assert usage.startswith(f"# lrm-fast-train model={option}")


def test_a_local_directory_replaces_the_hub_id():
    cfg = _compose(["model=r1_distill_qwen_1.5b", "model.path=/models/DeepSeek-R1-Distill-Qwen-1.5B"])
    assert cfg.model.path == "/models/DeepSeek-R1-Distill-Qwen-1.5B"


@pytest.mark.parametrize("option", sorted(HUB_IDS))
def test_uncached_model_is_not_downloaded(option):
    hub_id = HUB_IDS[option]
    if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
        pytest.skip(f"{hub_id} is in this machine's HF cache: loading it would take minutes")
    with pytest.raises(OSError, match=f"never downloads.*hf download {re.escape(hub_id)}"):
        build_policy(_compose([f"model={option}"]), torch.device("cpu"))
