"""Tokens per correct answer at matched held-out accuracy: the study's efficiency claim for RLR (§4), that
the relative length reward buys shorter correct answers at equal accuracy.

Definitions:
- A configuration's evaluation pools the first-round held-out samples of its seeds at one evaluation: a
  periodic one (RUN/eval/step_S.json, every seed must have it) or the final one (RUN/eval/final.json, at
  whatever step each seed ended). Round 0 only: later rounds of an adaptive evaluation (eval.max_rounds)
  sample the uncertain problems again, which would weight them twice. Its accuracy = correct / samples,
  with a 95% normal interval on the pooled samples; its tokens per correct answer = the mean length of
  the correct ones; its generated tokens per correct answer = the length of every sample over the correct
  ones (which also charges the wrong answers).
- Each configuration against the baseline: at their final evaluations when the two accuracies' intervals
  overlap ("final"); otherwise at the pair of evaluations, one of each, whose accuracies are closest
  ("closest accuracies"; the later pair on a tie). The cold start is no candidate: every configuration
  starts from the same model, evaluated with the same seeds, so it would always match itself. The claim
  holds at the chosen pair when the configuration's tokens per correct answer are below the baseline's.
- The pooled mean over problems favours the easy ones (solved more often, and shorter): a comparison of
  configurations that solve different problems mixes length with difficulty.

Runs without a final evaluation's samples give no section (None).
"""

import json
import math
from pathlib import Path

from lrm_fast.sweeps.runs import Configuration

Z95 = 1.959964  # two-sided 95% normal quantile


FINAL = "final"


def run_evaluations(run_dir: Path) -> dict[int | str, list[dict]]:
    """Periodic step (int) or FINAL -> the first-round held-out samples of that evaluation of the run."""
    evaluations = {}
    for path in sorted((run_dir / "eval").glob("*.json")):
        if path.stem == FINAL:
            key = FINAL
        elif path.stem.startswith("step_"):
            key = int(path.stem.removeprefix("step_"))
        else:
            continue  # the cold start (module docstring)
        entry = json.loads(path.read_text())["benchmarks"]["heldout"]
        samples = [s for problem in entry.get("problems", []) for s in problem.get("samples", [])]
        evaluations[key] = [s for s in samples if s.get("round", 0) == 0 and "length" in s]
    return evaluations


def pooled(configuration: Configuration) -> dict[int | str, dict]:
    """Evaluation (step or FINAL) -> the pooled evaluation of the configuration's seeds (module docstring)."""
    per_run = [run_evaluations(run.path) for run in configuration.runs]
    keys = set.intersection(*(set(e) for e in per_run)) if per_run else set()
    points = {}
    for key in sorted(keys, key=_order):
        samples = [s for evaluations in per_run for s in evaluations[key]]
        if not samples:
            continue
        correct = [s["length"] for s in samples if s["correct"]]
        accuracy = len(correct) / len(samples)
        half = Z95 * math.sqrt(accuracy * (1 - accuracy) / len(samples))
        points[key] = {
            "step": key,
            "samples": len(samples),
            "accuracy": accuracy,
            "ci": [accuracy - half, accuracy + half],
            "tokens_per_correct": sum(correct) / len(correct) if correct else None,
            "generated_per_correct": sum(s["length"] for s in samples) / len(correct) if correct else None,
        }
    return points


def compare(base: dict[int | str, dict], other: dict[int | str, dict]) -> dict:
    """The baseline and the other configuration at matched accuracy (module docstring)."""
    b, o = base[FINAL], other[FINAL]
    how = "final"
    if b["ci"][1] < o["ci"][0] or o["ci"][1] < b["ci"][0]:
        how = "closest accuracies"
        # The accuracy gap, then the later pair: evaluations ranked by step within each configuration.
        pairs = [(i + j, x, y) for i, x in enumerate(base.values()) for j, y in enumerate(other.values())]
        _, b, o = min(pairs, key=lambda p: (abs(p[1]["accuracy"] - p[2]["accuracy"]), -p[0]))
    held = None
    if b["tokens_per_correct"] is not None and o["tokens_per_correct"] is not None:
        held = o["tokens_per_correct"] < b["tokens_per_correct"]
    return {"compared_at": how, "baseline": b, "other": o, "held": held}


def _order(key: int | str) -> float:
    """Evaluations in step order, the final one last."""
    return math.inf if key == FINAL else key


def matched_section(configurations: list[Configuration], baseline: int) -> dict | None:
    """Every configuration against the baseline at matched accuracy; None where the samples are missing."""
    points = [pooled(c) for c in configurations]
    if not all(FINAL in p for p in points):
        return None
    return {
        "baseline": configurations[baseline].label,
        "comparisons": [
            {"label": c.label, **compare(points[baseline], p)}
            for i, (c, p) in enumerate(zip(configurations, points, strict=True))
            if i != baseline
        ],
    }


def matched_markdown(section: dict | None) -> str:
    if section is None:
        return ""
    lines = [
        f"## Tokens per correct answer at matched accuracy (baseline: {section['baseline']})",
        "",
        "| configuration | compared at | baseline step, acc % | step, acc % | baseline tokens / correct"
        " | tokens / correct | generated / correct: baseline, this | shorter? |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in section["comparisons"]:
        b, o = c["baseline"], c["other"]
        lines.append(
            f"| {c['label']} | {c['compared_at']} | {b['step']}, {100 * b['accuracy']:.1f} "
            f"| {o['step']}, {100 * o['accuracy']:.1f} | {_tokens(b['tokens_per_correct'])} "
            f"| {_tokens(o['tokens_per_correct'])} | {_tokens(b['generated_per_correct'])}, "
            f"{_tokens(o['generated_per_correct'])} | {_held(c['held'])} |"
        )
    return "\n".join(lines) + "\n"


def _tokens(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _held(held: bool | None) -> str:
    return {True: "held", False: "not held", None: "-"}[held]
