"""lrm_fast: a fast, hackable GRPO trainer for long reasoning models."""

__version__ = "0.1.0"
