"""The run as the experiment trackers see it: its names, the trackers it opened, and what they are given.

`lrm-fast-train` names the run (lrm_fast/cli/run_names.py: project, name, group and tags from Hydra's run
and sweep) and opens the trackers of `trainer.trackers` before any model is built, so that one that cannot
start (not installed, no credentials, an unreachable store) fails as one line; only the main rank opens
any. The names and the trackers' run ids are kept in RUN/trackers.json, so a resumed run continues the
same tracked runs under the same names.

Every tracker gets the rows of metrics.jsonl under the same names and steps; the resolved config as the
run's parameters; each held-out evaluation with its interval (eval/accuracy, eval/ci_low, eval/ci_high:
the cold start at step 0, the periodic ones, the final one at the last step), read from the RUN/eval/
LABEL.json files the trainer writes; and at the end the summary (summary/KEY at the last step) and, where
the tracker keeps files, the final evaluation's plots (those of `lrm-fast-eval`). A tracker that fails
mid-run is logged once as a warning and dropped: the run goes on, and metrics.jsonl stays the record.
"""

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.util import find_spec
from pathlib import Path
from tempfile import TemporaryDirectory

from lrm_fast.config import TrainConfig
from lrm_fast.config.choices import Tracker
from lrm_fast.training.trackers import MlflowTracker, TensorBoardTracker, WandbTracker

RECORD = "trackers.json"
ADAPTERS = {
    Tracker.tensorboard: TensorBoardTracker,
    Tracker.wandb: WandbTracker,
    Tracker.mlflow: MlflowTracker,
}
OPTIONAL = (Tracker.wandb, Tracker.mlflow)  # extras of the same names, and modules too

_log = logging.getLogger(__name__)


class TrackerError(RuntimeError):
    """A chosen tracker cannot start (the message is one line naming it)."""


@dataclass(frozen=True)
class TrackedRun:
    """How a run is named in the trackers (computed by the entry point from Hydra's run and sweep)."""

    project: str  # W&B project and MLflow experiment: the sweep's, or "lrm-fast" for a run of its own
    name: str  # the run directory
    store_dir: str  # the default MLflow store's folder (mlflow.db, mlartifacts/): where the command ran
    group: str | None = None  # a sweep job's configuration, seed aside: its seeds side by side
    tags: dict[str, str] = field(default_factory=dict)  # the keys the sweep varies (seed aside)


class Trackers:
    """The trackers a run opened (none on ranks other than the main one).

    `lrm-fast-train` opens them (`open_trackers`) and finishes or closes them; the trainer's MetricsLogger
    begins them and hands them every metrics row."""

    def __init__(self, run_dir: Path, trackers: list):
        self.run_dir, self.active = Path(run_dir), list(trackers)
        self._cold_start_pending = False

    def begin(self, start_step: int) -> None:
        """The trainer starts after `start_step` (0: a new run, which then logs its cold start first)."""
        self._cold_start_pending = start_step == 0
        self._each(lambda tracker: tracker.begin(start_step))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._cold_start()
        if "eval/accuracy" in metrics:  # a periodic evaluation: its interval is in its file
            metrics = {**metrics, **self._evaluation(f"step_{step}")}
        self._each(lambda tracker: tracker.log(step, metrics))

    def finish(self, summary: dict) -> None:
        """The run ended: its final evaluation and summary at the last step, then the plots; closed."""
        if not self.active:
            return
        self._cold_start()
        step = summary["steps"]
        if final := self._evaluation("final"):
            self._each(lambda tracker: tracker.log(step, final))
        values = {f"summary/{key}": float(value) for key, value in summary.items() if _is_number(value)}
        with TemporaryDirectory() as scratch:
            plots = self._plots(Path(scratch))
            self._each(lambda tracker: tracker.end(step, values, plots))
        self.close(finished=True)

    def close(self, finished: bool = False) -> None:
        """Close every tracker (a run that did not finish is marked failed where the tracker has a status)."""
        self._each(lambda tracker: tracker.close(finished))
        self.active = []

    def _cold_start(self) -> None:
        if self._cold_start_pending:
            self._cold_start_pending = False
            if cold := self._evaluation("cold_start"):
                self._each(lambda tracker: tracker.log(0, cold))

    def _evaluation(self, label: str) -> dict[str, float]:
        try:
            return evaluation(self.run_dir, label)
        except (OSError, ValueError, KeyError, TypeError) as error:  # the trackers go without it
            _log.warning("trainer.trackers: cannot read evaluation %s (%s)", label, _one_line(error))
            return {}

    def _plots(self, scratch: Path) -> list[Path]:
        """The final evaluation's plots, drawn only when a tracker keeps files (matplotlib only then)."""
        final = self.run_dir / "eval" / "final.json"
        if not final.exists() or not any(tracker.keeps_files for tracker in self.active):
            return []
        from lrm_fast.evaluation.multi_round import load_run
        from lrm_fast.evaluation.report import write_plots

        try:
            return write_plots(load_run(final), scratch)
        except Exception as error:  # the trackers go without them
            _log.warning("trainer.trackers: cannot draw the evaluation plots (%s)", _one_line(error))
            return []

    def _each(self, call: Callable) -> None:
        for tracker in list(self.active):
            try:
                call(tracker)
            except Exception as error:  # a tracker is a view of the run: it must not stop it
                self.active.remove(tracker)
                _log.warning(
                    "trainer.trackers: %s failed (%s) and is off for the rest of the run; "
                    "metrics.jsonl keeps every step",
                    tracker.name,
                    _one_line(error),
                )


def open_trackers(chosen: list[Tracker], run_dir: Path, run: TrackedRun, cfg: TrainConfig) -> Trackers:
    """Open the chosen trackers for the run in `run_dir` (a run resumed there keeps its recorded names and
    tracked runs); TrackerError if one cannot start, after closing those already open."""
    chosen = list(dict.fromkeys(chosen))
    for name in chosen:
        if name in OPTIONAL and find_spec(name.value) is None:
            raise TrackerError(f"trainer.trackers: {name} is not installed (pip install -e '.[{name}]')")
    record = read_record(run_dir)
    run = TrackedRun(**record["run"]) if "run" in record else run
    config = json.loads(json.dumps(asdict(cfg)))  # as config.yaml has it: enums as strings, tuples as lists
    opened = []
    for name in chosen:
        try:
            opened.append(ADAPTERS[name].start(run_dir, run, config, record.get(name.value)))
        except Exception as error:
            Trackers(run_dir, opened).close()
            raise TrackerError(f"trainer.trackers: {name} could not start: {_one_line(error)}") from error
    ids = {tracker.name: tracker.record for tracker in opened if tracker.record is not None}
    if ids:
        path = Path(run_dir) / RECORD
        path.write_text(json.dumps({"run": asdict(run), **ids}, indent=2) + "\n", encoding="utf-8")
    return Trackers(run_dir, opened)


def read_record(run_dir: Path) -> dict:
    """RUN/trackers.json: the run's names and each tracker's ids ({} before any tracker recorded one)."""
    path = Path(run_dir) / RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def evaluation(run_dir: Path, label: str) -> dict[str, float]:
    """The held-out score and interval of the trainer's evaluation RUN/eval/LABEL.json ({} without one)."""
    path = Path(run_dir) / "eval" / f"{label}.json"
    if not path.exists():
        return {}
    summary = json.loads(path.read_text(encoding="utf-8"))["benchmarks"]["heldout"]["summary"]
    if summary is None:  # killed before its first round
        return {}
    interval = {"eval/ci_low": summary["ci_low"], "eval/ci_high": summary["ci_high"]}
    return {"eval/accuracy": summary["score"], **interval}


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no message"
    return f"{type(error).__name__}: {text}"
