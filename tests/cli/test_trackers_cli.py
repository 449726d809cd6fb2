"""`lrm-fast-train` with W&B and MLflow as a user runs them: offline, nothing sent, one tracked run per run.

Four launches, each reused by several tests (module fixtures, the quick settings): a 2 x 2 sweep (two
regimes x two seeds) with every tracker and the network shut off; a run killed after a checkpoint, then a
refused resume and the resume. All share one working directory, so one MLflow store (mlflow.db there) is
created once; parallel runs creating a store together: tests/training/test_mlflow_store.py. W&B's offline
files have no public reader: what the run hands W&B is checked with a stand-in
(tests/training/test_tracking.py); here, its folders and ids."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from trainer_fixtures import QUICK

from lrm_fast.training.metrics import read_metrics

# This process reads the store too: MLflow decides on its telemetry when imported (off under pytest only
# once a test runs, not while the module is collected).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
mlflow = pytest.importorskip("mlflow")
pytest.importorskip("wandb")

# Audits every Python process of the run (launcher workers and spawned helpers included): any look-up or
# connection beyond this host is written down and refused. The network namespace (unshare) covers the
# rest, W&B's service binary included.
NETWORK_GUARD = """
import os, socket, sys

LOCAL = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", "None"}


def _guard(event, args):
    if event == "socket.connect" and args[0].family in (socket.AF_INET, socket.AF_INET6):
        host = args[1][0]
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
        host = args[0]
    else:
        return
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host in LOCAL or host.startswith("127."):
        return
    with open(os.environ["LRM_FAST_TEST_NETWORK_LOG"], "a") as log:
        log.write(f"{os.getpid()} {event} {host}\\n")
    raise OSError(f"network access refused by the test: {event} {host}")


sys.addaudithook(_guard)
"""
# MLflow keeps its telemetry quiet by itself under CI or pytest: without these the run is a user's.
NOT_A_USER = ("CI", "PYTEST_CURRENT_TEST", "DO_NOT_TRACK")
TRACKERS = "trainer.trackers=[tensorboard,wandb,mlflow]"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def env(workdir) -> dict:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in NOT_A_USER and not key.startswith(("WANDB_", "MLFLOW_"))
    }
    return {**env, "LRM_FAST_CACHE": str(workdir / "cache"), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}


def _train(args, env, cwd, prefix=(), flags=(), **kwargs):
    command = [*prefix, sys.executable, "-m", "lrm_fast.cli.train", *flags, *QUICK, *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=900, **kwargs)


def _network_off() -> list[str]:
    """A command prefix that runs in a network namespace of its own, unprivileged where user namespaces
    are allowed; [] where neither works (the audit guard alone then refuses Python's network calls)."""
    for prefix in (["unshare", "-rn"], ["unshare", "-n"]):
        if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return []


@pytest.fixture(scope="module")
def sweep(workdir, env):
    guard = workdir / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    log = workdir / "network.log"
    path = os.pathsep.join(filter(None, [str(guard), env.get("PYTHONPATH")]))
    guarded = {**env, "PYTHONPATH": path, "LRM_FAST_TEST_NETWORK_LOG": str(log)}
    args = [
        "hydra.sweep.dir=sweep",
        "trainer.steps=2",
        "eval.every=1",
        TRACKERS,
        "regime=full,positive",
        "seed=0,1",
    ]
    result = _train(args, guarded, workdir, prefix=_network_off(), flags=["-m"])
    assert result.returncode == 0, result.stderr[-3000:]
    return {"dir": workdir / "sweep", "network_log": log, "uri": f"sqlite:///{workdir / 'mlflow.db'}"}


def _search(uri: str, experiment: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def _eval(run_dir: Path, label: str) -> dict:
    summary = json.loads((run_dir / "eval" / f"{label}.json").read_text())["benchmarks"]["heldout"]["summary"]
    return {
        "eval/accuracy": summary["score"],
        "eval/ci_low": summary["ci_low"],
        "eval/ci_high": summary["ci_high"],
    }


def _expected_history(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl, plus the evaluations with their intervals and the summary: what MLflow must hold."""
    summary = json.loads((run_dir / "summary.json").read_text())
    last = summary["steps"]
    rows = [(0, _eval(run_dir, "cold_start"))]
    for row in read_metrics(run_dir):
        step = row.pop("step")
        if "eval/accuracy" in row:  # a periodic evaluation: the trackers add its interval
            interval = _eval(run_dir, f"step_{step}")
            row |= {"eval/ci_low": interval["eval/ci_low"], "eval/ci_high": interval["eval/ci_high"]}
        rows.append((step, row))
    rows += [(last, _eval(run_dir, "final")), (last, {f"summary/{k}": v for k, v in summary.items()})]
    history = {}
    for step, row in rows:
        for key, value in row.items():
            history.setdefault(key, []).append((step, float(value)))
    return history


def _steps(client, run_id: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, "time/rollout_s")]


def _history(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    keys = client.get_run(run_id).data.metrics
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in keys}


def _same(a: dict, b: dict) -> bool:
    """Equal histories, NaN equal to NaN."""

    def canonical(history):
        return {k: [(s, "nan" if math.isnan(v) else v) for s, v in points] for k, points in history.items()}

    return canonical(a) == canonical(b)


def _flat(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


# ------------------------------------------------------------------------------------ the sweep


@pytest.mark.slow
def test_a_sweep_is_one_experiment_with_one_group_per_setting(sweep):
    runs = _search(sweep["uri"], "sweep")
    assert sorted(run.info.run_name for run in runs) == ["sweep/0", "sweep/1", "sweep/2", "sweep/3"]
    groups = {}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["regime"] in run.data.tags["group"]
        groups.setdefault(run.data.tags["group"], []).append(run.data.params["seed"])
    assert {group: sorted(seeds) for group, seeds in groups.items()} == {
        "regime=full": ["0", "1"],
        "regime=positive": ["0", "1"],
    }


@pytest.mark.slow
def test_mlflow_holds_metrics_jsonl_the_evaluations_the_config_and_the_plots(sweep):
    client = mlflow.MlflowClient(sweep["uri"])
    for run in _search(sweep["uri"], "sweep"):
        run_dir = sweep["dir"] / run.info.run_name.removeprefix("sweep/")
        assert _same(_history(client, run.info.run_id), _expected_history(run_dir)), run_dir
        config = _flat(yaml.safe_load((run_dir / "config.yaml").read_text()))
        assert run.data.params == config
        plots = [artifact.path for artifact in client.list_artifacts(run.info.run_id, "plots")]
        assert plots == ["plots/pass_at_k.png", "plots/per_problem_accuracy.png", "plots/score_vs_rounds.png"]


@pytest.mark.slow
def test_wandb_writes_one_offline_run_per_job_under_its_recorded_id(sweep):
    for job in range(4):
        run_dir = sweep["dir"] / str(job)
        record = json.loads((run_dir / "trackers.json").read_text())
        run_id = record["wandb"]["id"]
        (folder,) = (run_dir / "wandb").glob("offline-run-*")
        assert folder.name.endswith(f"-{run_id}") and (folder / f"run-{run_id}.wandb").stat().st_size > 0
        assert record["run"]["group"] == f"regime={'full' if job < 2 else 'positive'}"


@pytest.mark.slow
def test_nothing_is_sent_anywhere(sweep):
    log = sweep["network_log"]
    assert not log.exists(), log.read_text()


# ------------------------------------------------------------------------------------ kill and resume


def _state(run_dir: Path, client, run_id: str) -> tuple:
    """The run directory's files and the MLflow run (W&B's folders by name: its service process may still
    be writing its logs after the kill)."""
    files = sorted(
        (str(p.relative_to(run_dir)), p.stat().st_size)
        for p in run_dir.rglob("*")
        if p.is_file() and p.relative_to(run_dir).parts[0] != "wandb"
    )
    wandb_runs = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    run = client.get_run(run_id)
    return files, wandb_runs, run.info.status, _history(client, run_id), run.data.params


@pytest.fixture(scope="module")
def resumed(workdir, env):
    """A run killed once MLflow holds step 3 (checkpoint at 2), a resume that is refused, then the resume."""
    run = workdir / "killed"
    args = ["trainer.steps=5", "trainer.checkpoint_every=2", "trainer.trackers=[wandb,mlflow]"]  # 2 to spare
    command = [sys.executable, "-m", "lrm_fast.cli.train", *QUICK, *args, f"hydra.run.dir={run}"]
    process = subprocess.Popen(
        command, env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline, client = time.time() + 600, None
    while process.poll() is None and time.time() < deadline:  # until MLflow holds step 3
        if client is None and (run / "trackers.json").exists():
            record = json.loads((run / "trackers.json").read_text())
            client = mlflow.MlflowClient(record["mlflow"]["tracking_uri"])
        if client is not None and 3 in _steps(client, record["mlflow"]["run_id"]):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "summary.json").exists() and (run / "checkpoints" / "step_000002").exists()
    killed = _state(run, client, record["mlflow"]["run_id"])

    refused = _train([*args, f"trainer.resume={run}", "trainer.lr=0.5"], env, workdir)
    after_refusal = _state(run, client, record["mlflow"]["run_id"])
    resume = _train([*args, f"trainer.resume={run}"], env, workdir)
    assert resume.returncode == 0, resume.stderr[-3000:]
    return {
        "dir": run,
        "record": record,
        "killed": killed,
        "refused": refused,
        "after_refusal": after_refusal,
    }


@pytest.mark.slow
def test_a_resumed_run_is_one_mlflow_run_with_each_step_once(resumed, workdir):
    uri = resumed["record"]["mlflow"]["tracking_uri"]
    assert uri == f"sqlite:///{workdir / 'mlflow.db'}"
    (run,) = [run for run in _search(uri, "lrm-fast") if run.info.run_name == "killed"]
    assert run.info.run_id == resumed["record"]["mlflow"]["run_id"] and run.info.status == "FINISHED"
    history = _history(mlflow.MlflowClient(uri), run.info.run_id)
    assert [step for step, _ in history["optim/lr"]] == [1, 2, 3, 4, 5]
    assert [step for step, _ in history["eval/accuracy"]] == [0, 5]  # the cold start and the final one
    killed = resumed["killed"][3]["time/rollout_s"]  # steps 1-3 at least; the resume trained 3 again
    assert len(killed) >= 3 and history["time/rollout_s"][: len(killed)] == killed  # and skipped it


@pytest.mark.slow
def test_a_resumed_wandb_run_keeps_its_id(resumed):
    run_dir, run_id = resumed["dir"], resumed["record"]["wandb"]["id"]
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 2  # the killed run's, then the resume's: `wandb sync` appends them in order
    assert all(folder.name.endswith(f"-{run_id}") for folder in folders)
    assert json.loads((run_dir / "trackers.json").read_text()) == resumed["record"]


@pytest.mark.slow
def test_a_refused_resume_touches_no_tracker(resumed):
    refused = resumed["refused"]
    assert refused.returncode == 1 and "cannot change trainer.lr" in refused.stderr
    assert resumed["after_refusal"] == resumed["killed"]
