"""Sweep reports (`lrm-fast-report`): configurations of `lrm-fast-train` runs compared over seeds.

A run is any directory under the given paths that holds metrics.jsonl (a Hydra multirun directory, one of
its numbered jobs, a single run, or a folder of those). Its configuration is its command-line overrides
(.hydra/overrides.yaml) minus the keys in IGNORED_KEYS (the seed, and keys that do not change what is
trained); runs with the same configuration are the seeds of it.

Per configuration, over its seeds (mean, sample std, min, max):
- final held-out avg@k, cold-start avg@k and the improvement in points (summary.json);
- the final evaluation's pass@k curve (eval/final.json, round 0), mean over seeds;
- zero-advantage ratio and its all-correct / all-wrong parts, mean over training steps, as the update saw
  them (after RLR and OSI; the `_before` metrics are not reported);
- mean length of correct and of incorrect responses over the first and the last 10% of the steps;
- clip fraction, approx KL (to the rollout policy) and ref KL (to the reference), means over steps;
- wall time of the GRPO run (summary.json; the cached SFT cold start is not included).

Simplifications:
- Runs without .hydra/ (hydra.output_subdir=null) have no recorded overrides: then every run's
  configuration is the set of resolved config.yaml values that differ between the runs.
- The command of a run is rebuilt from Hydra's record (multirun.yaml beside a job, else the run's
  .hydra/hydra.yaml) as `lrm-fast-train [-m] OVERRIDES`; `python -m lrm_fast.cli.train` is the same.
- Step metrics are averaged per step, not per response (every step has the same number of prompts).
- A step without correct (incorrect) responses logs length 0: such steps are left out of the length
  means and drawn as gaps.
- The runs of a configuration are aligned on step index and cut to the shortest one.
- Training curves are smoothed per seed by a trailing moving average over `window` steps (fewer at the
  start; default 5% of the steps), then averaged over the seeds that have a value at that step; the band
  is the min-max over those seeds.
- Unfinished runs (no summary.json) are skipped and listed.
"""

import json
import math
import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lrm_fast.evaluation.report import k_axis
from lrm_fast.training.metrics import read_metrics

# Keys that never split configurations: the seed is what is averaged over; the rest is bookkeeping.
IGNORED_KEYS = frozenset({"seed", "trainer.resume", "trainer.progress_bar", "cold_start.cache_dir"})
EDGE_SHARE = 0.1  # "first" and "last" length windows: this share of the steps (at least one step)
# Per-step metrics averaged over training: report name -> metrics.jsonl key.
STEP_MEANS = {
    "zero_adv_ratio": "zero_adv/ratio",
    "zero_adv_all_correct": "zero_adv/all_correct",
    "zero_adv_all_wrong": "zero_adv/all_wrong",
    "clip_fraction": "loss/clip_fraction",
    "approx_kl": "loss/approx_kl",
    "ref_kl": "loss/ref_kl",
}
LENGTHS = {"length_correct": "length/correct_mean", "length_incorrect": "length/incorrect_mean"}
CURVES = {
    "reward/accuracy": "training accuracy",
    "zero_adv/ratio": "zero-advantage ratio",
    "zero_adv/all_correct": "zero-adv: all correct",
    "zero_adv/all_wrong": "zero-adv: all wrong",
    "length/correct_mean": "length of correct responses",
    "length/incorrect_mean": "length of incorrect responses",
}
PLOT_NAMES = ("training_curves.png", "pass_at_k.png", "response_length.png")


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
        rows=[row for row in read_metrics(run_dir) if "reward/accuracy" in row],
        pass_at_k=pass_at_k,
        command=run_command(run_dir),
    )


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
    return numbers


def summarize_configuration(configuration: Configuration) -> dict:
    per_run = [run_numbers(run) for run in configuration.runs]
    curves = [run.pass_at_k for run in configuration.runs if run.pass_at_k]
    k = min((len(curve) for curve in curves), default=0)
    pass_at_k = np.array([curve[:k] for curve in curves]) if curves else np.zeros((0, 0))
    return {
        "label": configuration.label,
        "overrides": configuration.overrides,
        "seeds": [run.seed for run in configuration.runs],
        "runs": [str(run.path) for run in configuration.runs],
        **{name: spread([numbers[name] for numbers in per_run]) for name in per_run[0]},
        # pass@k over seeds: mean, min and max at every k = 1..k (runs without eval/final.json left out)
        "pass_at_k": {
            "mean": pass_at_k.mean(axis=0).tolist() if curves else None,
            "min": pass_at_k.min(axis=0).tolist() if curves else None,
            "max": pass_at_k.max(axis=0).tolist() if curves else None,
            "seeds": len(curves),
        },
    }


def step_values(rows: list[dict], key: str) -> np.ndarray:
    """One value per step; NaN where the key is missing, and where a length is 0 (no such responses)."""
    values = np.array([row.get(key, math.nan) for row in rows], dtype=np.float64)
    if key in LENGTHS.values():
        values[values == 0] = math.nan
    return values


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` steps (fewer at the start), NaN entries left out."""
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(end - window, 0)
    n = counts[end] - counts[start]
    return np.where(n > 0, (sums[end] - sums[start]) / np.maximum(n, 1), math.nan)


def seed_band(
    runs: list[Run], key: str, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, min, max) over seeds of the smoothed per-step curve, cut to the shortest run."""
    length = min(len(run.rows) for run in runs)
    steps = np.array([row["step"] for row in runs[0].rows[:length]])
    curves = np.stack([moving_average(step_values(run.rows[:length], key), window) for run in runs])
    finite = np.isfinite(curves)
    count = finite.sum(axis=0)
    mean = np.where(count > 0, np.where(finite, curves, 0.0).sum(axis=0) / np.maximum(count, 1), math.nan)
    # fmin / fmax ignore NaN (a seed without such responses at that step) without warnings
    return steps, mean, np.fmin.reduce(curves, axis=0), np.fmax.reduce(curves, axis=0)


def default_window(configurations: list[Configuration]) -> int:
    steps = max(len(run.rows) for c in configurations for run in c.runs)
    return max(1, round(steps / 20))


# ------------------------------------------------------------------------------------------- output


def build_report(paths: list[str | Path], out_dir: str | Path, window: int | None = None) -> dict:
    """Collect, group and aggregate the runs; write report.json, report.md and the plots to `out_dir`."""
    runs, skipped = find_runs(paths)
    configurations = group_runs(runs)
    window = window or default_window(configurations)
    report = {
        "paths": [str(p) for p in paths],
        "generated": datetime.now().isoformat(timespec="seconds"),
        "commands": list(dict.fromkeys(run.command for run in runs if run.command)),
        "common_overrides": common_overrides(configurations),
        "smoothing_window": window,
        "skipped": [str(path) for path in skipped],
        "configurations": [summarize_configuration(c) for c in configurations],
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(format_markdown(report))
    figures = (_training_curves(configurations, window), _pass_at_k(report), _lengths(configurations, window))
    for figure, name in zip(figures, PLOT_NAMES, strict=True):
        figure.savefig(out_dir / name, dpi=120, bbox_inches="tight")
    return report


TABLE_HEADER = (
    "configuration",
    "seeds",
    "steps",
    "final avg@k % (mean ± std)",
    "min–max",
    "Δ cold start (points)",
    "pass@k %",
    "zero-adv %",
    "all-correct %",
    "all-wrong %",
    "len correct first → last",
    "len incorrect first → last",
    "clip frac",
    "approx KL",
    "ref KL",
    "wall s",
)


COLUMN_NOTES = f"""\
Per configuration over its seeds: final avg@k is the held-out score after training (avg@k with k samples
per problem; spread as mean ± sample std and min–max); Δ cold start is its gain over the score before
training, in points; pass@k is the final evaluation's unbiased pass@k at k = 1 and the largest k, mean
over seeds. Zero-advantage ratios (share of groups with all-equal rewards, after RLR / OSI), clip
fraction and KL (approx: to the rollout policy; ref: to the reference) are means over training steps;
response lengths (tokens) are means over the first and the last {100 * EDGE_SHARE:g}% of the steps; wall
time is the GRPO run's (without the cached SFT cold start)."""


def format_table(report: dict) -> str:
    """The Markdown comparison table: one row per configuration."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for c in report["configurations"]:
        accuracy = c["final_accuracy"]
        cells = [
            f"`{c['label']}`",
            str(len(c["seeds"])),
            _number(c["steps"]["mean"], digits=0),
            _mean_std(accuracy, scale=100),
            f"{_number(accuracy['min'], 100)}–{_number(accuracy['max'], 100)}",
            _mean_std(c["improvement_points"]),
            _pass_at_k_cell(c["pass_at_k"]["mean"]),
            *(_number(c[name]["mean"], 100) for name in STEP_MEANS if name.startswith("zero_adv")),
            *(
                f"{_number(c[f'{name}_first']['mean'])} → {_number(c[f'{name}_last']['mean'])}"
                for name in LENGTHS
            ),
            _number(c["clip_fraction"]["mean"], digits=4),
            _number(c["approx_kl"]["mean"], digits=5),
            _number(c["ref_kl"]["mean"], digits=5),
            _mean_std(c["wall_time_s"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    commands = "\n".join(report["commands"]) or "(not recorded: no .hydra/ in the run directories)"
    common = " ".join(report["common_overrides"]) or "(none)"
    runs = "\n".join(
        f"- `{c['label']}`: seeds {', '.join(map(str, c['seeds']))} ({', '.join(c['runs'])})"
        for c in report["configurations"]
    )
    skipped = "".join(f"\n- skipped, unfinished: {path}" for path in report["skipped"])
    return f"""# Sweep report

`lrm-fast-report {" ".join(report["paths"])}` ({report["generated"]})

Command(s):

```
{commands}
```

Settings shared by all configurations: `{common}`

{format_table(report)}

{COLUMN_NOTES}

Runs:
{runs}{skipped}

![training curves](training_curves.png)

Training curves: trailing moving average over {report["smoothing_window"]} step(s) per seed, line = mean
over seeds, band = min–max over seeds.

![pass@k](pass_at_k.png)

![response length](response_length.png)
"""


# -------------------------------------------------------------------------------------------- plots


def _training_curves(configurations: list[Configuration], window: int) -> Figure:
    figure = Figure(figsize=(15, 8), layout="constrained")
    for axes, (key, title) in zip(figure.subplots(2, 3).flat, CURVES.items(), strict=True):
        for configuration in configurations:
            steps, mean, low, high = seed_band(configuration.runs, key, window)
            (line,) = axes.plot(steps, mean, label=configuration.label)
            axes.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        axes.set(title=title, xlabel="step", ylabel=key)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.axes[0].legend(fontsize="small")
    figure.suptitle(f"Training curves: moving average over {window} steps, band = min-max over seeds")
    return figure


def _pass_at_k(report: dict) -> Figure:
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    for c in report["configurations"]:
        curve = c["pass_at_k"]
        if not curve["mean"]:
            continue
        ks = np.arange(1, len(curve["mean"]) + 1)
        (line,) = axes.plot(ks, curve["mean"], marker="o", label=c["label"])
        axes.fill_between(ks, curve["min"], curve["max"], color=line.get_color(), alpha=0.2)
    k_max = max((len(c["pass_at_k"]["mean"]) for c in report["configurations"]), default=1)
    if k_max > 1:
        k_axis(axes, k_max)
    else:  # one sample per problem: the points sit at k = 1 alone, so say so rather than draw an axis
        axes.set_xticks([1], ["1"])
    axes.set(xlabel="k", ylabel="pass@k (held-out, final)", title="pass@k: mean, band = min-max over seeds")
    if axes.lines:
        axes.legend(fontsize="small")
    return figure


def _lengths(configurations: list[Configuration], window: int) -> Figure:
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    for configuration in configurations:
        color = None
        for key, style in (("length/correct_mean", "-"), ("length/incorrect_mean", "--")):
            steps, mean, low, high = seed_band(configuration.runs, key, window)
            kind = "correct" if key == "length/correct_mean" else "incorrect"
            (line,) = axes.plot(steps, mean, style, color=color, label=f"{configuration.label}: {kind}")
            color = line.get_color()
            axes.fill_between(steps, low, high, color=color, alpha=0.15)
    axes.set(xlabel="step", ylabel="mean response length (tokens)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(f"Response length (moving average over {window} steps, band = min-max over seeds)")
    axes.legend(fontsize="small")
    return figure


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


def _pass_at_k_cell(curve: list[float] | None) -> str:
    if not curve:
        return "-"
    ks = [1, len(curve)] if len(curve) > 1 else [1]
    return " / ".join(f"@{k} {100 * curve[k - 1]:.1f}" for k in ks)


def _number(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{scale * value:.{digits}f}"


def _mean_std(stats: dict, scale: float = 1.0, digits: int = 1) -> str:
    if stats["std"] is None:
        return _number(stats["mean"], scale, digits)
    return f"{_number(stats['mean'], scale, digits)} ± {_number(stats['std'], scale, digits)}"
