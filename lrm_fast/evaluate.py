"""Held-out accuracy during training: k sampled responses per problem, graded like the rewards.

Simplification: one fixed-seed round (the same samples for the same weights, so before/after numbers
compare like with like); `lrm-fast-eval` is the multi-round evaluator with confidence intervals.
"""

from dataclasses import dataclass

import torch

from lrm_fast.config import EvalConfig
from lrm_fast.data import PromptExample
from lrm_fast.distributed import all_reduce
from lrm_fast.grader import grade_batch
from lrm_fast.rollout import RolloutBackend, SamplingParams


@dataclass
class EvalResult:
    accuracy: float  # mean correctness over every sample (avg@k)
    num_problems: int
    samples_per_problem: int
    mean_response_length: float


def heldout_accuracy(
    backend: RolloutBackend,
    tokenizer,
    prompts: list[list[int]],
    examples: list[PromptExample],
    cfg: EvalConfig,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> EvalResult:
    """Each rank samples its share of the problems; counts are summed over ranks."""
    params = SamplingParams(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=seed + rank
    )
    shard = list(range(rank, len(prompts), world_size))
    k = cfg.samples_per_problem
    rollouts = backend.generate([prompts[i] for i in shard], group_size=k, params=params) if shard else []
    texts = tokenizer.batch_decode([r.response_ids for r in rollouts], skip_special_tokens=False)
    answers = [examples[i].answer for i in shard for _ in range(k)]
    correct = grade_batch(texts, answers)
    totals = torch.tensor(
        [sum(correct), len(correct), sum(len(r.response_ids) for r in rollouts)], dtype=torch.float64
    )
    all_reduce(totals)
    n = max(totals[1].item(), 1.0)
    return EvalResult(totals[0].item() / n, len(prompts), k, totals[2].item() / n)
