"""The rollout protocol: sample G responses per prompt and report the sampler's own log-probs.

Every backend returns the responses of one prompt consecutively (group i is
``rollouts[i * G : (i + 1) * G]``), each response cut after its first EOS token (kept), and the
log-prob under the distribution it was actually sampled from:
``logprobs[t] = log softmax(top_p(logits_t / temperature))[response_ids[t]]``. With top_p = 1 that is
exactly what the trainer recomputes as old_logp, so the two can be compared token for token.

Backends: ``hf`` (our decode loop on a transformers model; ``lrm_fast.rollout.hf``) and ``vllm`` (a vLLM
engine; ``lrm_fast.rollout.vllm``). Both also decode greedily (``greedy``), for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


class NonFiniteError(FloatingPointError):
    """The policy produced NaN or infinite logits while sampling (a diverged update)."""


@dataclass(frozen=True)
class SamplingParams:
    """How responses are sampled (group size is an argument of ``generate``)."""

    max_new_tokens: int
    """Response length limit; a response that reaches it without EOS is truncated (finished=False)."""
    temperature: float = 1.0
    """Logits are divided by it before softmax; the study samples rollouts at 0.6 (PAPER.md §1)."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 keeps the full distribution (the study's rollouts), 0.95 at evaluation."""
    seed: int | None = None
    """Seed for this call only (the global RNG is left untouched); None draws from the global RNG."""

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0 (greedy decoding is not a sampler), got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class Rollout:
    """One sampled response to one prompt."""

    prompt_ids: list[int]
    """The prompt as given, without padding."""
    response_ids: list[int]
    """Sampled tokens, up to and including the first EOS; nothing after it."""
    logprobs: list[float]
    """Sampler log-prob of each response token, same length as response_ids."""
    finished: bool
    """True if the response ended with EOS, False if it was cut at max_new_tokens."""
    versions: list[int] | None = None
    """The policy version that sampled each response token (partial rollouts, lrm_fast/rollout/partial.py);
    None: one version sampled them all."""


class RolloutBackend(Protocol):
    def generate(self, prompts: list[list[int]], group_size: int, params: SamplingParams) -> list[Rollout]:
        """``group_size`` responses per prompt, the responses of one prompt consecutive."""
        ...

    def greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[tuple[list[int], bool]]:
        """(response ids up to and including the first EOS, finished) of the argmax decoding of each."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the sampler use the weights of ``model`` (called after every optimizer step)."""
        ...
