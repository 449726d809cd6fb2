"""The experiment trackers behind `trainer.trackers`: TensorBoard, Weights & Biases, MLflow.

Each adapter has the same small surface, driven by lrm_fast/training/tracking.py: `start` (a classmethod:
open or, given the ids recorded in RUN/trackers.json, continue the tracked run), `record` (those ids),
`begin(start_step)`, `log(step, metrics)`, `end(step, summary, plots)` and `close(finished)`. wandb and
mlflow are optional extras, imported only when chosen.

Nothing leaves the machine unless the user says so:
- W&B runs offline (files in RUN/wandb/, `wandb sync` uploads them) unless WANDB_MODE is set. The mode is
  set through WANDB_MODE because W&B's process-wide settings read it: its usage-analytics exporter (0.31)
  follows them, not wandb.init's own `mode`, and posts to W&B's servers from an offline run otherwise.
- MLflow writes to the SQLite store mlflow.db (artifacts in mlartifacts/ beside it) in the directory the
  command ran in, MLflow's own default place, unless MLFLOW_TRACKING_URI is set: one store for every run
  started there (created once: its schema migrations take seconds), a sweep one experiment in it. Its usage
  telemetry is off (MLFLOW_DISABLE_TELEMETRY) unless the user turned it on: MLflow reads that when it is
  imported. Runs in parallel (a joblib sweep) share the store: SQLite serialises their writes, and a file
  lock their creating it, which MLflow's migrations cannot do twice at once. SQLite's locks do not hold
  across hosts on a network file system: jobs on several nodes need a tracking server.

A resume continues the same tracked run, each step once. TensorBoard drops the steps after the checkpoint
(`purge_step`), as metrics.jsonl does. MLflow cannot delete values, so each metric skips the steps the
store already holds. W&B resumes with the recorded id (offline, each resume adds a folder that `wandb sync`
appends in order) and, since its steps only grow, skips what the killed run logged: the rows of its
metrics.jsonl before the trainer truncates it.
"""

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from lrm_fast.training.metrics import read_metrics

DEFAULT_MLFLOW_STORE = "mlflow.db"
WANDB_TAG_CHARS = 64  # W&B refuses longer tags
WANDB_NAME_CHARS = 128  # and longer project and group names


class TensorBoardTracker:
    """RUN/tensorboard: scalars, and the config and summary as text."""

    name, keeps_files, record = "tensorboard", False, None

    def __init__(self, run_dir: Path, config: dict):
        self.path, self.config, self.writer = Path(run_dir) / "tensorboard", config, None

    @classmethod
    def start(cls, run_dir: Path, run, config: dict, previous: dict | None) -> "TensorBoardTracker":
        return cls(run_dir, config)

    def begin(self, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # Steps after the checkpoint were logged by the killed run: TensorBoard hides them on reading.
        self.writer = SummaryWriter(str(self.path), purge_step=start_step + 1)
        if start_step == 0:
            self.writer.add_text("config", _as_code(json.dumps(self.config, indent=2)), 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def end(self, step: int, summary: dict[str, float], plots: list[Path]) -> None:
        self.log(step, summary)

    def close(self, finished: bool) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbTracker:
    """A W&B run: history rows by step, the config, the summary, the plots as images."""

    name, keeps_files = "wandb", True

    def __init__(self, wandb, run, logged: tuple[int, set[str]] | None):
        self.wandb, self.run = wandb, run
        self.logged = logged  # (last step, its keys) of the run before a resume; None: a new run
        self.record = {"id": run.id}

    @classmethod
    def start(cls, run_dir: Path, run, config: dict, previous: dict | None) -> "WandbTracker":
        os.environ.setdefault("WANDB_MODE", "offline")  # module docstring: why not wandb.init(mode=...)
        import wandb

        wandb_run = wandb.init(
            dir=str(run_dir),
            project=run.project[:WANDB_NAME_CHARS],
            name=run.name,
            group=run.group[:WANDB_NAME_CHARS] if run.group else None,
            tags=[f"{key}={value}"[:WANDB_TAG_CHARS] for key, value in run.tags.items()],
            config=config,
            id=previous["id"] if previous else None,
            resume="allow" if previous else None,
        )
        return cls(wandb, wandb_run, _last_row(read_metrics(run_dir)) if previous else None)

    def begin(self, start_step: int) -> None:
        pass

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.logged is not None:
            last, keys = self.logged
            metrics = {k: v for k, v in metrics.items() if step > last or (step == last and k not in keys)}
        if metrics:
            self.run.log(metrics, step=step)

    def end(self, step: int, summary: dict[str, float], plots: list[Path]) -> None:
        self.run.summary.update(summary)
        if plots:
            self.run.log({f"plots/{path.stem}": self.wandb.Image(str(path)) for path in plots}, step=step)

    def close(self, finished: bool) -> None:
        self.run.finish(exit_code=0 if finished else 1)


class MlflowTracker:
    """An MLflow run: metric histories by step, the config as parameters, the summary, plots as artifacts."""

    name, keeps_files = "mlflow", True

    def __init__(self, client, run_id: str, logged: dict[str, int], tracking_uri: str):
        self.client, self.run_id = client, run_id
        self.logged = logged  # metric -> last step the store holds
        self.record = {"tracking_uri": tracking_uri, "run_id": run_id}

    @classmethod
    def start(cls, run_dir: Path, run, config: dict, previous: dict | None) -> "MlflowTracker":
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # read on import: module docstring
        from mlflow import MlflowClient

        if previous:
            client = MlflowClient(tracking_uri=previous["tracking_uri"])
            client.update_run(previous["run_id"], status="RUNNING")
            logged = _held_steps(client, previous["run_id"])
            tracker = cls(client, previous["run_id"], logged, previous["tracking_uri"])
        else:
            uri = os.environ.get("MLFLOW_TRACKING_URI")
            store = None if uri else Path(run.store_dir).resolve()
            uri = uri or f"sqlite:///{store / DEFAULT_MLFLOW_STORE}"
            with _store_lock(store):
                client = MlflowClient(tracking_uri=uri)
                experiment_id = _experiment(client, run.project, store)
            tags = {**({"group": run.group} if run.group else {}), **run.tags}
            run_id = client.create_run(experiment_id, run_name=run.name, tags=tags).info.run_id
            tracker = cls(client, run_id, {}, uri)
        tracker._log_new_params(_flat(config))
        return tracker

    def begin(self, start_step: int) -> None:
        pass

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        fresh = [
            Metric(key, float(value), now, step)
            for key, value in metrics.items()
            if step > self.logged.get(key, -1)
        ]
        if fresh:
            self.client.log_batch(self.run_id, metrics=fresh)

    def end(self, step: int, summary: dict[str, float], plots: list[Path]) -> None:
        self.log(step, summary)
        for path in plots:
            self.client.log_artifact(self.run_id, str(path), artifact_path="plots")

    def close(self, finished: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if finished else "FAILED")

    def _log_new_params(self, params: dict[str, str]) -> None:
        """Parameters the run does not hold yet: MLflow refuses to change one, and a resume may change
        the few keys it allows (lrm_fast/cli/resume.py, recorded in RUN/resumes.jsonl)."""
        from mlflow.entities import Param

        held = self.client.get_run(self.run_id).data.params
        new = [Param(key, value) for key, value in params.items() if key not in held]
        if new:
            self.client.log_batch(self.run_id, params=new)


def _experiment(client, name: str, store: Path | None) -> str:
    """The id of experiment `name`, created on first use (its artifacts beside the default store)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = (store / "mlartifacts").as_uri() if store is not None else None
    return client.create_experiment(name, artifact_location=artifacts)


@contextmanager
def _store_lock(store: Path | None):
    """Hold STORE/mlflow.db.lock (waiting for it): the first job of a parallel sweep creates the store."""
    if store is None:  # the user's store
        yield
        return
    store.mkdir(parents=True, exist_ok=True)
    with (store / f"{DEFAULT_MLFLOW_STORE}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _held_steps(client, run_id: str) -> dict[str, int]:
    """The last step of every metric the run holds."""
    keys = client.get_run(run_id).data.metrics
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in keys}


def _last_row(rows: list[dict]) -> tuple[int, set[str]] | None:
    """(the last step of metrics.jsonl, the keys logged at it), or None for an empty file."""
    if not rows:
        return None
    last = rows[-1]["step"]
    return last, {key for row in rows if row["step"] == last for key in row if key != "step"}


def _flat(tree: dict, prefix: str = "") -> dict[str, str]:
    """{"trainer.lr": "0.0001", ...}: MLflow parameters are strings (JSON for anything but a string)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


def _as_code(text: str) -> str:
    """TensorBoard's text panel renders markdown: indented lines show as a code block."""
    return "\n".join(f"    {line}" for line in text.splitlines())
