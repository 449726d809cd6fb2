"""Training runs of a sweep: found on disk, loaded, grouped into configurations, and their per-run numbers.

A run is any directory that holds metrics.jsonl (see lrm_fast/sweeps/report.py for what is reported and
how runs are grouped). Its final evaluation is the one of its evaluation files with the most rounds:
RUN/eval/final.json (the trainer's), or a results.json below RUN written by `lrm-fast-eval` of the run's
model (`lrm-fast-eval model.path=RUN/final_model output_dir=RUN/eval_final max_rounds=4`), first clean
benchmark (one without a perturbation); ties go to the trainer's file.
"""

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from lrm_fast.config import CPU_THREAD_KEYS
from lrm_fast.training.metrics import read_metrics

# Keys that never split configurations: the seed is what is averaged over; the rest is bookkeeping, and
# the CPU thread counts, which change the order of float sums, not what is trained.
IGNORED_KEYS = frozenset(
    {"seed", "trainer.resume", "trainer.progress_bar", "cold_start.cache_dir", *CPU_THREAD_KEYS}
)
EDGE_SHARE = 0.1  # "first" and "last" length windows: this share of the steps (at least one step)
# Per-step metrics averaged over training: report name -> metrics.jsonl key.
STEP_MEANS = {
    "zero_adv_ratio": "zero_adv/ratio",
    "zero_adv_all_correct": "zero_adv/all_correct",
    "zero_adv_all_wrong": "zero_adv/all_wrong",
    "truncated_ratio": "length/truncated_ratio",  # responses that filled the window (absent before 2026-12)
    "clip_fraction": "loss/clip_fraction",
    "approx_kl": "loss/approx_kl",
    "ref_kl": "loss/ref_kl",
}
LENGTHS = {"length_correct": "length/correct_mean", "length_incorrect": "length/incorrect_mean"}
# The mean sampled response length (every response of a step) over the last EDGE_SHARE of the steps.
SAMPLED_LENGTH = "length/response_mean"


@dataclass
class Run:
    path: Path
    seed: int
    overrides: list[str] | None  # None: the run has no .hydra/overrides.yaml
    config: dict[str, object]  # flattened resolved config.yaml
    summary: dict
    rows: list[dict]  # training steps of metrics.jsonl (periodic-evaluation rows left out)
    pass_at_k: list[float] | None  # final evaluation, k = 1..samples per problem
    command: str | None
    evaluation: dict | None = None  # the final evaluation's benchmark entry (`final_evaluation`)
    # periodic held-out evaluations of metrics.jsonl (eval.every): rows {"step": s, "eval/accuracy": a}
    eval_rows: list[dict] = field(default_factory=list)


@dataclass
class Configuration:
    label: str  # the overrides that set it apart from the other configurations
    overrides: list[str]
    runs: list[Run]  # sorted by seed


# ------------------------------------------------------------------------------------------ collect


def find_runs(paths: list[str | Path]) -> tuple[list[Run], list[Path]]:
    """Finished runs under `paths` (job order) and the unfinished ones (no summary.json)."""
    runs, skipped, seen = [], [], set()
    for root in paths:
        for metrics in sorted(Path(root).rglob("metrics.jsonl"), key=_natural_key):
            run_dir = metrics.parent.resolve()
            if run_dir in seen:
                continue
            seen.add(run_dir)
            if (run_dir / "summary.json").exists():
                runs.append(load_run(run_dir))
            else:
                skipped.append(run_dir)
    if not runs:
        raise FileNotFoundError(
            f"no finished run (metrics.jsonl + summary.json) under {list(map(str, paths))}"
        )
    return runs, skipped


def load_run(run_dir: Path) -> Run:
    run_dir = Path(run_dir)
    config = _flatten(yaml.safe_load((run_dir / "config.yaml").read_text()))
    overrides_path = run_dir / ".hydra" / "overrides.yaml"
    metrics = read_metrics(run_dir)
    final_eval = run_dir / "eval" / "final.json"
    pass_at_k = None
    if final_eval.exists():
        pass_at_k = json.loads(final_eval.read_text())["benchmarks"]["heldout"]["summary"]["pass_at_k"]
    return Run(
        path=run_dir,
        seed=int(config["seed"]),
        overrides=yaml.safe_load(overrides_path.read_text()) if overrides_path.exists() else None,
        config=config,
        summary=json.loads((run_dir / "summary.json").read_text()),
        rows=[row for row in metrics if "reward/accuracy" in row],
        pass_at_k=pass_at_k,
        command=run_command(run_dir),
        evaluation=final_evaluation(run_dir),
        eval_rows=[row for row in metrics if "eval/accuracy" in row],
    )


def final_evaluation(run_dir: Path) -> dict | None:
    """The clean benchmark entry with the most rounds among RUN/eval/final.json and the `lrm-fast-eval`
    results.json files below RUN (module docstring); None without any finished round."""
    candidates = [run_dir / "eval" / "final.json", *sorted(run_dir.rglob("results.json"), key=_natural_key)]
    best = None
    for path in candidates:
        if not path.is_file():
            continue
        run = json.loads(path.read_text())
        clean = [
            entry
            for entry in run.get("benchmarks", {}).values()
            if entry.get("rounds") and entry["settings"].get("perturbation") is None
        ]
        if (
            run.get("format") == 1
            and clean
            and (best is None or len(clean[0]["rounds"]) > len(best["rounds"]))
        ):
            best = clean[0]
    return best


def run_command(run_dir: Path) -> str | None:
    """The command line that made the run, from Hydra's record; None without one."""
    for path, multirun in (
        (run_dir.parent / "multirun.yaml", True),
        (run_dir / ".hydra" / "hydra.yaml", False),
    ):
        if path.exists():
            overrides = yaml.safe_load(path.read_text())["hydra"]["overrides"]
            args = [o for o in overrides["hydra"] if not o.startswith("hydra.mode=")] + overrides["task"]
            return shlex.join(["lrm-fast-train", *(["-m"] if multirun else []), *args])
    return None


def group_runs(runs: list[Run]) -> list[Configuration]:
    """Configurations in order of first appearance, each with its runs sorted by seed."""
    if any(run.overrides is None for run in runs):
        keys = _differing_keys([run.config for run in runs])
        settings = [[f"{key}={run.config.get(key)}" for key in keys] for run in runs]
    else:
        settings = [[o for o in run.overrides if _override_key(o) not in IGNORED_KEYS] for run in runs]
    groups: dict[tuple[str, ...], tuple[list[str], list[Run]]] = {}
    for run, overrides in zip(runs, settings, strict=True):
        groups.setdefault(tuple(sorted(overrides)), (overrides, []))[1].append(run)
    common = set.intersection(*(set(key) for key in groups))
    return [
        Configuration(
            label=" ".join(o for o in overrides if o not in common)
            or ("all runs" if len(groups) == 1 else "(common settings)"),
            overrides=overrides,
            runs=sorted(members, key=lambda run: run.seed),
        )
        for overrides, members in groups.values()
    ]


def common_overrides(configurations: list[Configuration]) -> list[str]:
    shared = set.intersection(*(set(c.overrides) for c in configurations))
    return [o for o in configurations[0].overrides if o in shared]


# ---------------------------------------------------------------------------------------- aggregate


def spread(values: list[float | None]) -> dict:
    """Mean, sample std (None for one value), min and max of the finite values; all values kept."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    stats = {"mean": None, "std": None, "min": None, "max": None}
    if len(finite):
        stats = {
            "mean": float(finite.mean()),
            "std": float(finite.std(ddof=1)) if len(finite) > 1 else None,
            "min": float(finite.min()),
            "max": float(finite.max()),
        }
    return {**stats, "values": [_finite_or_none(v) for v in values]}


def run_numbers(run: Run) -> dict[str, float | None]:
    """The run's scalars that the report averages over seeds."""
    numbers = {
        "final_accuracy": run.summary["final_heldout_accuracy"],
        "cold_start_accuracy": run.summary["cold_start_heldout_accuracy"],
        "improvement_points": run.summary["improvement_points"],
        "wall_time_s": run.summary["wall_time_s"],
        "steps": run.summary["steps"],
    }
    for name, key in STEP_MEANS.items():
        numbers[name] = _mean(step_values(run.rows, key))
    edge = max(1, math.ceil(EDGE_SHARE * len(run.rows)))
    for name, key in LENGTHS.items():
        numbers[f"{name}_first"] = _mean(step_values(run.rows[:edge], key))
        numbers[f"{name}_last"] = _mean(step_values(run.rows[-edge:], key))
    numbers["length_sampled_last"] = _mean(step_values(run.rows[-edge:], SAMPLED_LENGTH))
    return numbers


def step_values(rows: list[dict], key: str) -> np.ndarray:
    """One value per step; NaN where the key is missing, and where a length is 0 (no such responses)."""
    values = np.array([row.get(key, math.nan) for row in rows], dtype=np.float64)
    if key in LENGTHS.values():
        values[values == 0] = math.nan
    return values


# ------------------------------------------------------------------------------------------ helpers


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _differing_keys(configs: list[dict[str, object]]) -> list[str]:
    keys = sorted(set().union(*configs) - IGNORED_KEYS)
    return [key for key in keys if len({json.dumps(c.get(key)) for c in configs}) > 1]


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _natural_key(path: Path) -> list[tuple]:
    # Hydra job folders are 0, 1, ..., 10: numeric parts compare as numbers
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else None


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value
