"""`lrm-fast-sft`: train (or find in the cache) the tiny model's SFT cold start and print where it is.

Takes the same config as `lrm-fast-train` (model.tiny, cold_start, the built-in task of data); the main job
reuses the cached result, so running this first only moves the SFT time out of the first training run.
"""

import logging

import hydra
from omegaconf import DictConfig

from lrm_fast.cli.configs import register_configs, typed
from lrm_fast.config import TrainConfig, validate
from lrm_fast.config.choices import ModelSource
from lrm_fast.runtime import configure_runtime

register_configs()


@hydra.main(version_base="1.3", config_path="pkg://lrm_fast.conf", config_name="config")
def main(dict_cfg: DictConfig) -> str:
    cfg: TrainConfig = typed(dict_cfg)
    validate(cfg)
    if cfg.model.name != ModelSource.tiny:
        raise ValueError("lrm-fast-sft builds the cold start of the built-in model: use model=tiny")
    configure_runtime(cfg.trainer.num_threads)
    from lrm_fast.training.assembly import cold_start_dir

    path = cold_start_dir(cfg)
    logging.getLogger(__name__).info("cold start ready: %s", path)
    print(path)
    return str(path)


if __name__ == "__main__":
    main()
