"""Rollout: sampling responses (and their log-probs) from the policy, with our decode loop or vLLM."""

from lrm_fast.rollout.base import NonFiniteError, Rollout, RolloutBackend, SamplingParams

__all__ = ["NonFiniteError", "Rollout", "RolloutBackend", "SamplingParams"]
