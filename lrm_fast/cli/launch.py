"""Everything `lrm-fast-train` checks and claims before the first model is built.

In order: the configuration (a resume takes the run's own, lrm_fast/cli/resume.py), its checks, the data
(read and sized against the batch), the run directory (locked while the run lives; a directory that holds
a run is reused only through trainer.resume), the experiment trackers (opened on the main rank, named by
lrm_fast/cli/run_names.py, closed when the run ends), and config.yaml. A bad setting or input
fails here as one line naming the key or the file, not as a traceback, and leaves no empty output
directory behind; what fails later (a bug, a diverged run) keeps its traceback.
"""

import json
import shutil
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lrm_fast.cli.configs import typed, write_hydra_record
from lrm_fast.cli.resume import record_resume, resumed_config
from lrm_fast.cli.run_names import tracked_run
from lrm_fast.config import AUTO_RESUME, TrainConfig, check_inputs, validate
from lrm_fast.runtime import DistInfo, broadcast_from_main, configure_runtime
from lrm_fast.runtime.lock import LOCK_NAME, DirectoryInUse, directory_lock
from lrm_fast.training.assembly import RunData, load_run_data
from lrm_fast.training.tracking import TrackerError, Trackers, open_trackers

# Files that make a directory a run's (written by the trainer); Hydra's own are .hydra/ and *.log.
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints")
INPUT_ERRORS = (ValueError, FileNotFoundError, DirectoryInUse, TrackerError)


@dataclass
class Launch:
    cfg: TrainConfig
    run_dir: Path
    dist: DistInfo
    data: RunData
    trackers: Trackers  # the main rank's; finished by the entry point, closed when the run ends


@contextmanager
def input_errors(program: str, hydra_dir: Path, holds: ExitStack):
    """Turn a bad setting or input raised in the block into one line on stderr and exit status 1, and
    remove the Hydra output directory if nothing was written there (releasing what `holds` holds)."""
    try:
        yield
    except INPUT_ERRORS as error:
        holds.close()
        if not isinstance(error, DirectoryInUse):  # that directory is the live run's: leave it alone
            _remove_if_empty(hydra_dir)
        sys.exit(f"{program}: error: {error}")


@contextmanager
def launched_run(program: str, dict_cfg: DictConfig, hydra_dir: Path) -> Iterator[Launch]:
    """The checked run, its directory locked for the block; input errors exit with one line."""
    holds = ExitStack()
    resume = dict_cfg.trainer.resume
    with input_errors(program, hydra_dir, holds):
        launch = _prepare(dict_cfg, hydra_dir, holds)
    try:
        with holds:
            yield launch
    finally:
        if resume:
            _remove_if_empty(hydra_dir)  # the resumed run writes into its own directory


def finished_run(program: str, dict_cfg: DictConfig, hydra_dir: Path) -> dict | None:
    """The summary of the finished run that `trainer.resume=auto` keeps in this launch's directory, if any.

    Kept only when the launch asks for the run's own settings (those a resume may change aside): a
    finished run of other settings is refused with one line, as a resume would refuse it, and one asked
    for another trainer.steps is continued (a resume that records the change)."""
    summary = hydra_dir / "summary.json"
    if dict_cfg.trainer.resume != AUTO_RESUME or not summary.is_file():
        return None
    with input_errors(program, hydra_dir, ExitStack()):
        _, changes = resumed_config(dict_cfg, hydra_dir)
    if "trainer.steps" in changes:
        return None
    return json.loads(summary.read_text())


def _prepare(dict_cfg: DictConfig, hydra_dir: Path, holds: ExitStack) -> Launch:
    resume = dict_cfg.trainer.resume
    if resume == AUTO_RESUME:  # this launch's own directory: continued if a run started there
        resume = str(hydra_dir) if (hydra_dir / "config.yaml").is_file() else None
        OmegaConf.update(dict_cfg, "trainer.resume", resume)
    run_dir, changes = hydra_dir, None
    if resume:
        run_dir = Path(resume).expanduser()
        if not run_dir.is_dir():
            raise FileNotFoundError(f"trainer.resume: no such run directory: {resume}")
        dict_cfg, changes = resumed_config(dict_cfg, run_dir)
    cfg = typed(dict_cfg)
    validate(cfg)
    check_inputs(cfg)
    dist = configure_runtime(cfg.trainer.num_threads)
    # Under torchrun every rank composes its own Hydra output directory: all use the main rank's.
    run_dir = Path(broadcast_from_main(str(run_dir)))
    data = load_run_data(cfg, dist.world_size)
    trackers = _claim(run_dir, dict_cfg, cfg, changes, holds) if dist.is_main else Trackers(run_dir, [])
    return Launch(cfg, run_dir, dist, data, trackers)


def _claim(run_dir: Path, dict_cfg: DictConfig, cfg: TrainConfig, changes: dict | None, holds: ExitStack):
    """The main rank's part: lock the run directory, open the trackers, write the run's record and config
    (`changes` is None for a new run, the accepted changes of a resume otherwise)."""
    holds.enter_context(directory_lock(run_dir, "lrm-fast-train run"))
    present = [name for name in RUN_FILES if (run_dir / name).exists()]
    if present and changes is None:
        raise ValueError(
            f"{run_dir} already holds a run ({', '.join(present)}): continue it with "
            f"trainer.resume={run_dir}, or choose another hydra.run.dir"
        )
    trackers = open_trackers(cfg.trainer.trackers, run_dir, tracked_run(run_dir), cfg)
    holds.callback(trackers.close)  # a run that ends without finishing them leaves them failed
    if changes is not None:
        record_resume(run_dir, changes)
        # A continued run is unfinished until it writes its summary again (trainer.resume=auto keeps runs
        # that have one).
        (run_dir / "summary.json").unlink(missing_ok=True)
    else:  # a resume keeps the record of the launch that started the run
        write_hydra_record(run_dir, dict_cfg)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(dict_cfg, resolve=True))
    return trackers


def _remove_if_empty(directory: Path) -> None:
    """Remove a Hydra output directory that holds nothing but Hydra's record, logs and our lock."""
    if not directory.is_dir():
        return
    ours = [p for p in directory.iterdir() if p.name not in (".hydra", LOCK_NAME) and p.suffix != ".log"]
    if not ours:
        shutil.rmtree(directory, ignore_errors=True)
        with suppress(OSError):  # Hydra's outputs/DATE/ too, when this was its only run
            directory.parent.rmdir()
