"""Where step metrics go: metrics.jsonl (one JSON object per step), TensorBoard, a progress bar.

Only the main rank writes. On resume, rows logged after the checkpoint (by the killed run) are
dropped from metrics.jsonl and TensorBoard, so the files read as one uninterrupted run.
"""

import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

# Shown live in the progress bar.
PROGRESS_KEYS = {"reward/mean": "reward", "reward/accuracy": "acc", "zero_adv/ratio": "zero_adv"}


class MetricsLogger:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool, progress_bar: bool):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        self.bar = None
        if not enabled:
            return
        _truncate_after(self.path, start_step)
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1)
        if progress_bar:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="grpo", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
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
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the half-written last line of a killed run
            continue
        if row["step"] <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))
