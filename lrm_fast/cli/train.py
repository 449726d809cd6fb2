"""`lrm-fast-train`: GRPO on the composed config (conf/config.yaml; try `--cfg job` to print it).

Parse, build, train, close. Outputs go to Hydra's run directory (outputs/DATE/TIME by default, one
subdirectory per job of a multirun); `trainer.resume=RUN_DIR` continues a killed run in place.
"""

import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lrm_fast.cli.configs import register_configs, typed
from lrm_fast.config import TrainConfig, validate
from lrm_fast.runtime import broadcast_from_main, close_distributed, configure_runtime

register_configs()


@hydra.main(version_base="1.3", config_path="pkg://lrm_fast.conf", config_name="config")
def main(dict_cfg: DictConfig) -> dict:
    cfg: TrainConfig = typed(dict_cfg)
    validate(cfg)
    dist = configure_runtime(cfg.trainer.num_threads)
    # Under torchrun every rank composes its own Hydra output directory: all use the main rank's.
    run_dir = Path(broadcast_from_main(cfg.trainer.resume or HydraConfig.get().runtime.output_dir))
    if cfg.trainer.prompts_per_step % dist.world_size:
        raise ValueError(f"trainer.prompts_per_step must be a multiple of the world size {dist.world_size}")
    from lrm_fast.training.trainer import GRPOTrainer  # heavy imports once the config is known valid

    if dist.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(dict_cfg, resolve=True))
    trainer = None
    try:
        trainer = GRPOTrainer(cfg, run_dir, dist)
        summary = trainer.train()
    finally:
        if trainer is not None:
            trainer.close()  # a vLLM engine leaves its process groups before the default one goes
        close_distributed()
    if dist.is_main:
        print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
