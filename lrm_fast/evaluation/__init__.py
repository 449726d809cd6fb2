"""Evaluation: multi-round sampling and scoring of benchmarks, its statistics (pass@k, maj@k, intervals,
variance, paired comparisons) and its report. Independent of the training loop."""
