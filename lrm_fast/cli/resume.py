"""Resuming a run with its own configuration: what a resume keeps, what it may change, what it refuses.

`lrm-fast-train trainer.resume=RUN` continues with RUN/config.yaml, the configuration the run started
with (its command-line overrides included), not with today's defaults. An override given with the resume
is compared with that configuration: equal is fine; a different value is accepted only for the keys of
MUTABLE_ON_RESUME (how long to train, how often to checkpoint and evaluate, what to show, how many CPU
threads), and recorded in RUN/resumes.jsonl; any other difference is refused before anything is written,
because a run whose learning rate, group size, regime or loss changed half-way is not the run its
metrics describe.
Keys that later versions add are refused too: only this list may change.
"""

import json
import time
from pathlib import Path

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lrm_fast.config import CPU_THREAD_KEYS, TrainConfig

# How long, how often and what to show, and how many CPU threads: a killed run continued on a machine with
# other cores may set its threads anew.
MUTABLE_ON_RESUME = (
    "trainer.steps",
    "trainer.checkpoint_every",
    "trainer.progress_bar",
    "eval.every",
    *CPU_THREAD_KEYS,
)
HISTORY = "resumes.jsonl"


def resumed_config(dict_cfg: DictConfig, run_dir: Path) -> tuple[DictConfig, dict]:
    """(the run's saved configuration with the accepted changes, {key: [saved, new]} of those changes)."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise FileNotFoundError(f"trainer.resume: {run_dir} has no config.yaml (not a lrm-fast-train run)")
    saved = _flat(OmegaConf.to_container(OmegaConf.load(saved_path), resolve=True, enum_to_str=True))
    requested = _flat(OmegaConf.to_container(dict_cfg, resolve=True, enum_to_str=True))
    baseline = _flat(OmegaConf.to_container(_defaults_of_this_call(), resolve=True, enum_to_str=True))
    explicit = {key for key in requested.keys() | baseline.keys() if requested.get(key) != baseline.get(key)}
    differing = sorted(key for key in explicit - {"trainer.resume"} if requested.get(key) != saved.get(key))
    refused = [key for key in differing if key not in MUTABLE_ON_RESUME]
    if refused:
        changes = ", ".join(
            f"{key}={requested.get(key)!r} (the run has {saved.get(key)!r})" for key in refused
        )
        raise ValueError(
            f"trainer.resume={run_dir}: cannot change {changes}. A resume may change only "
            f"{', '.join(MUTABLE_ON_RESUME)}; start a new run for other settings"
        )
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(saved_path))
    for key in differing:
        OmegaConf.update(merged, key, requested[key])
    OmegaConf.update(merged, "trainer.resume", str(run_dir))
    return merged, {key: [saved.get(key), requested[key]] for key in differing}


def record_resume(run_dir: Path, changes: dict) -> None:
    """One line per resume in RUN/resumes.jsonl: when, and which mutable keys it changed."""
    line = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "changed": changes}
    with (run_dir / HISTORY).open("a", encoding="utf-8") as history:
        history.write(json.dumps(line) + "\n")


def _defaults_of_this_call() -> DictConfig:
    """The config this call would compose without its overrides (trainer.resume kept): what an override
    changed is where the two differ, group choices (regime=negative) and experiments included."""
    overrides = [o for o in HydraConfig.get().overrides.task if o.split("=", 1)[0] == "trainer.resume"]
    return compose(config_name=HydraConfig.get().job.config_name, overrides=overrides)


def _flat(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return flat
