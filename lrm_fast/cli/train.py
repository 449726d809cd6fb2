"""`lrm-fast-train`: GRPO on the composed config (conf/config.yaml; try `--cfg job` to print it).

Parse, check, build, train, close. Outputs go to Hydra's run directory (outputs/DATE/TIME by default, one
subdirectory per job of a multirun), which the run locks while it lives; `trainer.resume=RUN_DIR`
continues a stopped run in place with its own configuration (lrm_fast/cli/resume.py), and
`trainer.resume=auto` does so in the launch's own directory, keeping a finished run there as it is.
"""

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lrm_fast.cli.configs import register_configs
from lrm_fast.cli.launch import finished_run, launched_run
from lrm_fast.runtime import close_distributed

register_configs()


@hydra.main(version_base="1.3", config_path="pkg://lrm_fast.conf", config_name="config")
def main(dict_cfg: DictConfig) -> dict:
    hydra_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = finished_run("lrm-fast-train", dict_cfg, hydra_dir)
    if summary is not None:  # trainer.resume=auto keeps a finished run as it is
        kept = f"lrm-fast-train: {hydra_dir} holds a finished run; kept (trainer.resume=auto)"
        print(kept, file=sys.stderr)
        return summary
    with launched_run("lrm-fast-train", dict_cfg, hydra_dir) as launch:
        cfg, run_dir, dist = launch.cfg, launch.run_dir, launch.dist
        from lrm_fast.training.guard import Diverged
        from lrm_fast.training.trainer import GRPOTrainer  # heavy imports once the run is claimed

        trainer = None
        try:
            trainer = GRPOTrainer(cfg, run_dir, dist, launch.data, launch.trackers)
            summary = trainer.train()
            launch.trackers.finish(summary)
        except Diverged as error:
            sys.exit(f"lrm-fast-train: stopped at {error}")
        finally:
            if trainer is not None:
                trainer.close()  # a vLLM engine leaves its process groups before the default one goes
            close_distributed()
    if dist.is_main:
        print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
