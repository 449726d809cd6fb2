"""Hydra configs, installed as the package lrm_fast.conf (read through `pkg://lrm_fast.conf`)."""
