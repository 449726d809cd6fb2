"""Where configuration crosses the entry point: the typed schemas registered in Hydra's ConfigStore, and
Hydra's composed DictConfig turned into them once. Nothing below lrm_fast.cli sees Hydra or OmegaConf."""

from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
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


def write_hydra_record(directory: Path, dict_cfg: DictConfig) -> None:
    """Hydra's record of this launch in DIRECTORY/.hydra (config.yaml, hydra.yaml, overrides.yaml, as
    Hydra writes them), written once the launch owns the directory. conf/ turns Hydra's own writing off
    (hydra.output_subdir: null): Hydra writes before the task starts, so a launch refused because the
    directory is another run's would have rewritten that run's record."""
    hydra = HydraConfig.get()
    record = Path(directory) / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(dict_cfg, record / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra}), record / "hydra.yaml")
    OmegaConf.save(hydra.overrides.task, record / "overrides.yaml")
