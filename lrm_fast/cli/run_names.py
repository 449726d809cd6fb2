"""How a run is named in the experiment trackers, from Hydra's run and sweep (lrm_fast/training/tracking.py).

- name: the run directory, relative to the directory the command ran in when inside it
  (outputs/DATE/TIME, multirun/DATE/TIME/3). That directory also holds the default MLflow store
  (mlflow.db, MLflow's own default place, where `mlflow ui` looks).
- project (W&B project, MLflow experiment): a sweep (`-m`) is one, named after its directory
  (multirun-DATE-TIME); a run of its own goes to "lrm-fast".
- group and tags: in a sweep, the keys it varies other than the seed, with this job's values
  (tags regime=full; group "regime=full"), so that the seeds of one configuration sit side by side. A sweep
  over seeds alone is named by its other overrides, or "defaults".

The swept keys come from Hydra's record of the sweep, SWEEP_DIR/multirun.yaml (written before any job
starts); without it every override of the job but the seed counts.
"""

import re
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

from lrm_fast.training.tracking import TrackedRun

SINGLE_RUN_PROJECT = "lrm-fast"
UNSPLIT_KEYS = frozenset({"seed", "trainer.resume"})  # never part of a configuration's name


def tracked_run(run_dir: Path) -> TrackedRun:
    """The names of the run in `run_dir` under the current Hydra job."""
    hydra = HydraConfig.get()
    cwd = Path(hydra.runtime.cwd)
    name = _shown(run_dir, cwd)
    if hydra.mode != RunMode.MULTIRUN:
        return TrackedRun(project=SINGLE_RUN_PROJECT, name=name, store_dir=str(cwd))
    sweep_dir = Path(hydra.sweep.dir)
    sweep_dir = sweep_dir if sweep_dir.is_absolute() else cwd / sweep_dir
    job = _parsed(list(hydra.overrides.task))
    record = sweep_dir / "multirun.yaml"
    swept = (
        {key for key, value in _parsed(OmegaConf.load(record).hydra.overrides.task).items() if value is None}
        if record.exists()
        else set(job)
    )
    keys = (swept - UNSPLIT_KEYS) or (set(job) - UNSPLIT_KEYS)  # a sweep over seeds: its other overrides
    tags = {key: job[key] for key in sorted(keys) if key in job}
    group = ",".join(f"{key}={value}" for key, value in tags.items()) or "defaults"
    project = re.sub(r"[^A-Za-z0-9_.=-]+", "-", _shown(sweep_dir, cwd)).strip("-")
    return TrackedRun(project=project, name=name, store_dir=str(cwd), group=group, tags=tags)


def _parsed(overrides: list[str]) -> dict[str, str | None]:
    """{key: the value as written, or None for a sweep over several values} of Hydra overrides."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return {o.key_or_group: None if o.is_sweep_override() else o.get_value_element_as_str() for o in parsed}


def _shown(path: Path, cwd: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(cwd.resolve())) if path.is_relative_to(cwd.resolve()) else str(path)
