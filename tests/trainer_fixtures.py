"""Small deterministic models and batches shared by the trainer tests."""

import random

import torch

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import TinyModelConfig
from lrm_fast.model.causal_lm import build_model, tiny_qwen2_config

VOCAB = 40

# A short cold start and a few small steps: seconds, yet rewards vary so the updates are real.
QUICK = [
    "trainer=smoke",
    "trainer.prompts_per_step=8",
    "rollout.group_size=4",
    "eval.problems=16",
    "cold_start.steps=40",
    "cold_start.batch_size=32",
    "cold_start.warmup_steps=5",
    "cold_start.num_problems=2000",
    "data.train_problems=200",
    "regime.drop_zero_variance=false",  # every response forwarded: updates happen even at 0 reward
    "loss.entropy_coef=0.01",
    "trainer.progress_bar=false",
]


def tiny_model(seed: int = 0, layers: int = 2):
    shape = TinyModelConfig(hidden_size=64, num_layers=layers, num_heads=2, intermediate_size=128)
    config = tiny_qwen2_config(VOCAB, shape)
    return build_model(config, seed=seed)


def synthetic_samples(num_groups: int, group_size: int, seed: int = 0) -> list[B.Sample]:
    """Groups of responses with varied lengths and 0/1 rewards (some zero-variance groups)."""
    rng = random.Random(seed)
    samples = []
    for g in range(num_groups):
        prompt = [rng.randrange(3, VOCAB) for _ in range(rng.randint(2, 6))]
        all_same = g % 3 == 2
        for _ in range(group_size):
            response = [rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 9))]
            reward = 1.0 if all_same else float(rng.random() < 0.5)
            samples.append(B.Sample(prompt, response, reward, correct=reward > 0))
    return samples


def prepared_batches(samples, group_size, aggregation, token_budget, world_size=1, rank=0):
    """Advantages, global weights and this rank's micro-batches, as the trainer builds them."""
    B.assign_advantages(samples, group_size, "std")
    normalisers = B.local_normalisers(samples)
    groups = [samples[i : i + group_size] for i in range(0, len(samples), group_size)]
    mine = [s for g in groups[rank::world_size] for s in g]
    cut = M.weighted_micro_batches(mine, aggregation, normalisers, 10, token_budget, False)
    return [M.collate(mb, False) for mb in cut]


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
