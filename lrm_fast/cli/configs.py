"""Where configuration crosses the entry point: the typed schemas registered in Hydra's ConfigStore, and
Hydra's composed DictConfig turned into them once. Nothing below lrm_fast.cli sees Hydra or OmegaConf."""

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from lrm_fast.config import EvalAppConfig, TrainConfig


def register_configs() -> None:
    """Register the schemas; conf/config.yaml starts its defaults list with `base_config`, and
    conf/evaluate.yaml with `eval_base_config`."""
    store = ConfigStore.instance()
    store.store(name="base_config", node=TrainConfig)
    store.store(name="eval_base_config", node=EvalAppConfig)


def typed(dict_cfg: DictConfig):
    """The dataclass instance behind a composed config (interpolations resolved)."""
    return OmegaConf.to_object(dict_cfg)
