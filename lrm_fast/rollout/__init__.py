"""Rollout: sampling responses (and their log-probs) from the policy, with our decode loop or vLLM."""

from lrm_fast.rollout.base import Rollout, RolloutBackend, SamplingParams

__all__ = ["Rollout", "RolloutBackend", "SamplingParams"]
