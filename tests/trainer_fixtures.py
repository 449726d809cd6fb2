"""Small deterministic models and batches shared by the trainer tests."""

import random

import torch

from lrm_fast import batch as B
from lrm_fast.model import build_model, tiny_qwen2_config

VOCAB = 40


def tiny_model(seed: int = 0, layers: int = 2):
    config = tiny_qwen2_config(VOCAB, hidden_size=64, num_layers=layers, num_heads=2, intermediate_size=128)
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
    B.assign_weights(samples, aggregation, normalisers, sum_norm_length=10)
    groups = [samples[i : i + group_size] for i in range(0, len(samples), group_size)]
    mine = [s for g in groups[rank::world_size] for s in g]
    return [B.collate(mb, pad_id=0) for mb in B.micro_batches(mine, token_budget)]


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
