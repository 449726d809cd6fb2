"""The training loop: assembly of a run's parts, the GRPO step and update, checkpoints and metrics."""
