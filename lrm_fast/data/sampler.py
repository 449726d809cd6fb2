"""A resumable sampler of prompt batches.

Batches of distinct prompts come from a per-epoch permutation that depends only on (seed, epoch), so the
sampler's whole state is (epoch, position) and a resumed run draws exactly the batches the interrupted
run would have drawn. Simplification: the last incomplete batch of each epoch is dropped (every batch has
the same size, as the group statistics and learning rate assume). Dynamic sampling's rounds draw batches of
their own size from the same order.

A batch's request reserves every round dynamic sampling may need; the rounds it did not use are put back
(`put_back`) and drawn first by the next batches, so no prompt is skipped, as when rounds draw as they go
(DAPO). Put-back prompts not drawn when an epoch ends are dropped: the new epoch's order holds them.
"""

from collections.abc import Sequence

import numpy as np

from lrm_fast.data.examples import PromptExample


class PromptSampler:
    """Batches of ``batch_size`` distinct examples, reshuffled every epoch, resumable exactly.

    Epoch e visits the examples in the order ``permutation(seed, e)``; ``position`` counts the
    examples of that order already drawn. Draw with ``next_batch()``.
    """

    def __init__(self, examples: Sequence[PromptExample], batch_size: int, seed: int = 0):
        if not 1 <= batch_size <= len(examples):
            raise ValueError(
                f"batch_size must be in [1, {len(examples)}] (the number of examples), got {batch_size}"
            )
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(self.epoch)
        self._returned: list[int] = []  # put back, drawn before the order goes on
        self._index = {}  # example -> its index (the first, for repeated examples)
        for index, example in enumerate(self.examples):
            self._index.setdefault(example, index)

    def _permutation(self, epoch: int) -> np.ndarray:
        # Seeded by (seed, epoch) alone, so no generator state needs saving.
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def next_batch(self, size: int | None = None) -> list[PromptExample]:
        """The next `size` examples (default: batch_size); a new epoch starts when fewer are left."""
        size = self.batch_size if size is None else size
        if not 1 <= size <= len(self.examples):
            raise ValueError(
                f"size must be in [1, {len(self.examples)}] (the number of examples), got {size}"
            )
        returned = self._returned[:size]
        if self.position + size - len(returned) > len(self.examples):
            self.epoch += 1
            self.position = 0
            self._order = self._permutation(self.epoch)
            self._returned, returned = [], []
        self._returned = self._returned[len(returned) :]
        fresh = size - len(returned)
        indices = [*returned, *self._order[self.position : self.position + fresh]]
        self.position += fresh
        return [self.examples[index] for index in indices]

    def put_back(self, examples: Sequence[PromptExample]) -> None:
        """Examples drawn but not used, to be drawn again first, in order."""
        self._returned += [self._index[example] for example in examples]

    def state_dict(self) -> dict[str, int]:
        """Integers (JSON-safe); the dataset size and batch size are kept to check a resume."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "returned": [int(index) for index in self._returned],
            "seed": self.seed,
            "num_examples": len(self.examples),
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        current = self.state_dict()
        for key in ("seed", "num_examples", "batch_size"):
            if state[key] != current[key]:
                raise ValueError(
                    f"cannot resume: the saved sampler has {key}={state[key]}, this one {key}={current[key]}"
                )
        self.epoch = state["epoch"]
        self.position = state["position"]
        self._returned = list(state.get("returned", []))
        self._order = self._permutation(self.epoch)
