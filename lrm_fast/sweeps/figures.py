"""The sweep report's plots: training curves, pass@k and response lengths, mean and min-max band over seeds;
with generated tokens logged, held-out accuracy against them.

matplotlib's object API (a bare Figure renders with Agg), so no global backend is touched.

Accuracy against generated tokens: each seed's accuracy is a step function of the tokens (the last
evaluation at or below, the rule of the budget table, lrm_fast/sweeps/budget.py), read on the union of the
seeds' evaluation points up to the shortest run's total (as the training curves are cut to the shortest
run); line = mean over seeds, band = min-max; every seed's evaluations are drawn as points, those past the
cut included.
"""

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lrm_fast.evaluation.report import k_axis
from lrm_fast.sweeps.budget import Curve, accuracy_at, accuracy_curve
from lrm_fast.sweeps.runs import Configuration, Run, step_values

CURVES = {
    "reward/accuracy": "training accuracy",
    "zero_adv/ratio": "zero-advantage ratio",
    "zero_adv/all_correct": "zero-adv: all correct",
    "zero_adv/all_wrong": "zero-adv: all wrong",
    "length/correct_mean": "length of correct responses",
    "length/incorrect_mean": "length of incorrect responses",
}
PLOT_NAMES = ("training_curves.png", "pass_at_k.png", "response_length.png")  # written for every report
BUDGET_PLOT = "accuracy_vs_tokens.png"  # written only when the runs log generated tokens


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


def training_curves(configurations: list[Configuration], window: int) -> Figure:
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


def pass_at_k_figure(report: dict) -> Figure:
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    for c in report["configurations"]:
        curve = c["pass_at_k"]
        if not curve["mean"]:
            continue
        ks = np.arange(1, len(curve["mean"]) + 1)
        (line,) = axes.plot(ks, curve["mean"], marker="o", label=c["label"])
        axes.fill_between(ks, curve["min"], curve["max"], color=line.get_color(), alpha=0.2)
    # a configuration without final evaluations has no curve
    k_max = max((len(c["pass_at_k"]["mean"] or [1]) for c in report["configurations"]), default=1)
    if k_max > 1:
        k_axis(axes, k_max)
    else:  # one sample per problem: the points sit at k = 1 alone, so say so rather than draw an axis
        axes.set_xticks([1], ["1"])
    axes.set(xlabel="k", ylabel="pass@k (held-out, final)", title="pass@k: mean, band = min-max over seeds")
    if axes.lines:
        axes.legend(fontsize="small")
    return figure


def length_figure(configurations: list[Configuration], window: int) -> Figure:
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


def token_band(curves: list[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, mean, min, max) over seeds of the accuracy step functions (module docstring)."""
    end = min(tokens[-1] for tokens, _ in curves)
    grid = np.unique(np.concatenate([tokens for tokens, _ in curves]))
    grid = grid[grid <= end]
    values = np.stack([accuracy_at(curve, grid) for curve in curves])
    return grid, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def accuracy_tokens_figure(configurations: list[Configuration], budget: dict) -> Figure:
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    for configuration in configurations:
        curves = [curve for run in configuration.runs if (curve := accuracy_curve(run)) is not None]
        if not curves:  # runs from before the token metric
            continue
        grid, mean, low, high = token_band(curves)
        (line,) = axes.plot(grid, mean, drawstyle="steps-post", label=configuration.label)
        axes.fill_between(grid, low, high, step="post", color=line.get_color(), alpha=0.2)
        for tokens, accuracy in curves:
            axes.plot(tokens, accuracy, "o", color=line.get_color(), markersize=3, alpha=0.5)
    if budget["tokens"] is not None:
        axes.axvline(
            budget["tokens"], color="black", linestyle=":", label=f"budget ({budget['tokens']:,.0f})"
        )
    target = budget["target_accuracy"]
    axes.axhline(target, color="gray", linestyle="--", label=f"target {100 * target:.1f}% (baseline final)")
    axes.set(xlabel="generated tokens (cumulative)", ylabel="held-out accuracy")
    axes.set_title("Held-out accuracy against generated tokens: mean, band = min-max over seeds")
    axes.legend(fontsize="small")
    return figure
