"""A rollout backend whose prompts are split over the ranks (evaluation under torchrun)."""

from dataclasses import replace

import torch.distributed as dist


class ShardedBackend:
    """A rollout backend whose prompts are split over the ranks: each rank samples every world_size-th
    prompt (seeded with seed * world_size + rank), and every rank gets all rollouts back, in order.

    Evaluation uses it so that every rank holds the same results while sampling only its share. Without
    a process group it is the wrapped backend itself.
    """

    def __init__(self, backend, rank: int, world_size: int):
        self.backend, self.rank, self.world_size = backend, rank, world_size

    def __getattr__(self, name):  # model, tokenizer, eos_token_ids, ... of the wrapped backend
        return getattr(self.backend, name)

    def generate(self, prompts: list[list[int]], group_size: int, params) -> list:
        if self.world_size == 1:
            return self.backend.generate(prompts, group_size, params)
        seed = None if params.seed is None else params.seed * self.world_size + self.rank
        mine = prompts[self.rank :: self.world_size]
        # Called even with no prompts: ranks that share a tensor-parallel engine must call it together.
        rollouts = self.backend.generate(mine, group_size, replace(params, seed=seed))
        shards = [None] * self.world_size
        dist.all_gather_object(shards, rollouts)
        ordered = []
        for i in range(len(prompts)):  # prompt i is the (i // world)-th prompt of rank i % world
            shard, position = shards[i % self.world_size], i // self.world_size
            ordered += shard[position * group_size : (position + 1) * group_size]
        return ordered
