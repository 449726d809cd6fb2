"""Where step metrics go: metrics.jsonl (one JSON object per step), the run's trackers, a progress bar.

Only the main rank writes. On resume, rows logged after the checkpoint (by the killed run) are dropped
from metrics.jsonl, so the file reads as one uninterrupted run; the trackers (TensorBoard by default,
lrm_fast/training/tracking.py) are told where the run starts again and do the same their own way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:  # tracking.py imports read_metrics from here
    from lrm_fast.training.tracking import Trackers

# Shown live in the progress bar.
PROGRESS_KEYS = {"reward/mean": "reward", "reward/accuracy": "acc", "zero_adv/ratio": "zero_adv"}


class MetricsLogger:
    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        start_step: int,
        enabled: bool,
        progress_bar: bool,
        trackers: Trackers,
    ):
        self.enabled, self.trackers = enabled, trackers
        self.path = Path(run_dir) / "metrics.jsonl"
        self.bar = None
        if not enabled:
            return
        _truncate_after(self.path, start_step)
        trackers.begin(start_step)
        if progress_bar:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="grpo", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        self.trackers.log(step, metrics)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                {short: f"{metrics[k]:.3f}" for k, short in PROGRESS_KEYS.items() if k in metrics}
            )

    def write(self, message: str) -> None:
        """A line above the progress bar (or plain print without one)."""
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(message)

    def close(self) -> None:
        """The progress bar ends here; the trackers are finished by `lrm-fast-train`, which opened them."""
        if self.bar is not None:
            self.bar.close()


def read_metrics(run_dir: Path) -> list[dict]:
    return [row for _, row in _rows(Path(run_dir) / "metrics.jsonl")]


def _truncate_after(path: Path, step: int) -> None:
    if path.exists():
        path.write_text("".join(line + "\n" for line, row in _rows(path) if row["step"] <= step))


def _rows(path: Path) -> list[tuple[str, dict]]:
    """(line, row) of every complete line: a killed run can leave its last line half-written."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append((line, json.loads(line)))
        except json.JSONDecodeError:
            continue
    return rows
