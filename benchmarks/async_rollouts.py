"""Synchronous against asynchronous GRPO (trainer.max_staleness) on the embedded main job: step time and
final accuracy, seeds interleaved across the arms, one run at a time.

    python -m benchmarks.async_rollouts --out benchmarks/results/async         (3 seeds, the main job)
    python -m benchmarks.async_rollouts --arms sync,sync_update_threads_2 --seeds 0 --steps 50
    python -m benchmarks.async_rollouts --arms sync,async,async_lag2,async_partial_lag2 \
        --extra +experiment=long_192 eval.problems=100 --steps 15 \
        --out benchmarks/results/async_long                                  (the long task's tail)

Each run is `lrm-fast-train ARM_OVERRIDES seed=S` (plus --extra); for each seed every arm runs before the
next seed, so a slow spell of a shared machine hits both arms alike. The step time counts GRPO steps only
(`time/step_s` of metrics.jsonl: sampling, scoring, the update, the rollout process's start in step 1);
the SFT cold start (cached) and the evaluations are left out. Per arm: mean step time over the seeds (each
seed's mean over its steps), its ratio to the first arm, final held-out accuracy (mean, min, max), and
the seconds spent waiting for rollouts, updating and, asynchronously, updating while the rollout process
sampled; a worker's seconds per batch (from its landing to its end) and, with partial rollouts, the share
of tokens sampled with newer weights than their batch's first. Writes OUT/results.json and OUT/results.md;
prints the table.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from lrm_fast.training.metrics import read_metrics

ARMS = {
    "sync": [],  # the main job: sampling on one thread, the update on every core
    "sync_update_threads_1": ["trainer.update_threads=1"],  # everything on one thread
    "async": ["trainer.max_staleness=1"],  # one core to each side (on 2 cores)
    "async_update_threads_2": ["trainer.max_staleness=1", "trainer.update_threads=2"],  # cores shared
    "async_lag2": ["trainer.max_staleness=2"],  # two batches sampled ahead
    # Partial rollouts on the long task (+experiment=long_192): a batch lands every 96 decode steps of 192, so
    # that a batch ends within its own landing and the next, made while the batch before it is trained.
    "async_partial_lag2": ["trainer.max_staleness=2", "rollout.partial_steps=96"],
}


def run_arm(arm: str, seed: int, steps: int | None, extra: list[str], out: Path) -> dict:
    run_dir = out / arm / f"seed{seed}"
    overrides = [*ARMS[arm], f"seed={seed}", "trainer.progress_bar=false", *extra]
    if steps is not None:
        overrides.append(f"trainer.steps={steps}")
    command = [sys.executable, "-m", "lrm_fast.cli.train", *overrides, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{arm} seed {seed} failed:\n{result.stderr[-3000:]}")
    rows = [r for r in read_metrics(run_dir) if "time/step_s" in r]
    summary = json.loads((run_dir / "summary.json").read_text())
    total = lambda key: sum(r.get(key, 0.0) for r in rows)
    return {
        "arm": arm,
        "seed": seed,
        "steps": len(rows),
        "step_s": total("time/step_s") / len(rows),
        "rollout_wait_s": total("time/rollout_s"),
        "update_s": total("time/update_s"),
        "overlap_s": total("async/overlap_s"),
        "sampling_s": total("async/sampling_s"),  # the workers' time per batch, landing to end, summed
        "fresher_tokens": total("async/fresher_tokens") / len(rows),
        "final_accuracy": summary["final_heldout_accuracy"],
    }


def summarize(runs: list[dict], arms: list[str]) -> list[dict]:
    rows = []
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        step = [r["step_s"] for r in mine]
        accuracy = [r["final_accuracy"] for r in mine]
        rows.append(
            {
                "arm": arm,
                "overrides": " ".join(ARMS[arm]) or "(none)",
                "seeds": len(mine),
                "steps": statistics.mean(r["steps"] for r in mine),
                "step_s": statistics.mean(step),
                "step_s_std": statistics.stdev(step) if len(step) > 1 else 0.0,
                "accuracy": statistics.mean(accuracy),
                "accuracy_min": min(accuracy),
                "accuracy_max": max(accuracy),
                **{
                    k: statistics.mean(r[k] for r in mine)
                    for k in ("rollout_wait_s", "update_s", "overlap_s", "sampling_s", "fresher_tokens")
                },
            }
        )
    for row in rows:
        row["ratio"] = row["step_s"] / rows[0]["step_s"]
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| arm | overrides | seeds | s / step | vs first | final held-out (min-max) | rollout wait s "
        "| update s | overlap s | worker s / batch | fresher tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | `{r['overrides']}` | {r['seeds']} | {r['step_s']:.3f} ± {r['step_s_std']:.3f} | "
            f"{r['ratio']:.2f}x | {100 * r['accuracy']:.1f}% ({100 * r['accuracy_min']:.1f}-"
            f"{100 * r['accuracy_max']:.1f}) | {r['rollout_wait_s']:.1f} | {r['update_s']:.1f} | "
            f"{r['overlap_s']:.1f} | {r['sampling_s'] / r['steps']:.2f} | {100 * r['fresher_tokens']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="sync,async", help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps (default: the main job's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/async"))
    parser.add_argument("--extra", nargs="*", default=[], help="more lrm-fast-train overrides, every arm")
    args = parser.parse_args(argv)
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}: choose from {list(ARMS)}")
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm in arms:
            runs.append(run_arm(arm, seed, args.steps, args.extra, args.out))
            print(json.dumps(runs[-1]), flush=True)
    rows = summarize(runs, arms)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"runs": runs, "arms": rows}, indent=2) + "\n")
    table = markdown(rows)
    (args.out / "results.md").write_text(table)
    print(table)
    return rows


if __name__ == "__main__":
    main()
