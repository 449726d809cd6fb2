"""Partial rollouts: responses that go on decoding across weight updates, on our transformers decode loop.

A rollout worker (lrm_fast/training/rollout_worker.py) keeps one pool of unfinished responses. Each request
lands with its weights: the pool's rows carry on under them, the request's rows join, and the pool decodes
`steps` decode steps (fewer if it empties) before the next request lands. So a long response of batch n goes
on with the weights of batch n + 1 instead of keeping the worker to itself at a small batch until it ends:
the long tail of one batch overlaps the start of the next, and its late tokens are fresher. The landings come
at fixed decode-step counts, never when weights happen to arrive, so a run stays reproducible and resumable.

Each token records the version of the weights that sampled it and its log-prob under them (the behaviour
policy of the trainer's off-policy correction, token by token).

The two choices:
- **Re-prefill, not the old KV cache.** At a landing every unfinished row is prefilled again (prompt and
  response so far) with the new weights, as AReaL does. A token is then sampled from exactly what its own
  version computes for its prefix, so its recorded log-prob is that version's, which the correction needs;
  a cache kept from the old weights would mix two policies in one distribution that no model computes. The
  prefill is needed anyway for the joining rows, so the pool takes one forward per landing.
- **No response outlives the staleness bound, so nothing is dropped or cut** (non-finite logits aside: they
  end the whole pool, lrm_fast/training/partial_pool.py). A batch lands with the weights
  the fixed schedule gives it (lrm_fast/training/async_rollout.py); later landings only make its tokens
  fresher. What must hold instead is that a batch ends within the landings of requests the trainer makes
  before the step that trains it (else the trainer would wait for a landing it has yet to request):
  validation asks `steps x ((lag - 1) // workers + 1) >= max_new_tokens`, so spanning takes
  lag >= workers + 1.

Each chunk (one trainer rank's share of a request) draws from a generator of its own, seeded as the
synchronous loop seeds that share, so a chunk that never shares the pool samples exactly what
`HFRolloutBackend.generate` samples (up to its `max_batch_size` rows: that loop draws bigger shares a slice
at a time). The pool decodes as one batch, cut by nothing: every unfinished row of up to
(lag - 1) // workers + 1 requests, left-padded to the longest prefix. Its activations grow with it, which
suits the CPU path this is built for; a GPU run samples with vLLM, where partial rollouts are not wired in.

Between two landings the pool's whole state is its rows and generators (`state_dict`): a checkpoint saves
it, and the next landing recomputes the cache from it.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from lrm_fast.rollout.base import Rollout, SamplingParams
from lrm_fast.rollout.hf import HFRolloutBackend, _draw, left_pad


@dataclass(frozen=True)
class Chunk:
    """Rows that land together and come back together: `group_size` responses to each prompt."""

    key: Hashable
    prompts: list[list[int]]
    group_size: int
    seed: int


@dataclass
class _Row:
    chunk: Hashable
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    finished: bool = False


class PartialDecoder:
    """The pool of a worker: `land` a request's chunks with the weights now in the backend's model, then
    `decode`; the chunks whose rows have all ended come back, in landing order."""

    def __init__(self, backend: HFRolloutBackend, params: SamplingParams):
        self.backend, self.params = backend, params
        self.device = next(backend.model.parameters()).device
        self.version: int | None = None
        self.rows: dict[Hashable, list[_Row]] = {}  # every unreturned chunk's rows, in landing order
        self.generators: dict[Hashable, torch.Generator] = {}
        self.active: list[_Row] = []  # the unfinished rows, in the order of the batch (and the cache)
        self.logits: torch.Tensor | None = None  # the next token's, per active row

    @property
    def empty(self) -> bool:
        return not self.rows

    def state_dict(self) -> dict:
        """Everything the pool holds between two calls: its rows, their order, each chunk's generator. The
        cache and logits are left out: the next landing computes them anew, with the next weights."""
        where = {id(row): (key, i) for key, rows in self.rows.items() for i, row in enumerate(rows)}
        return {
            "version": self.version,
            "rows": self.rows,
            "active": [where[id(row)] for row in self.active],
            "generators": {key: g.get_state() for key, g in self.generators.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """The pool of `state_dict`; it decodes again after the next landing."""
        self.version, self.rows = state["version"], state["rows"]
        self.active = [self.rows[key][i] for key, i in state["active"]]
        self.generators = {}
        for key, generator_state in state["generators"].items():
            self.generators[key] = torch.Generator(self.device)
            self.generators[key].set_state(generator_state)
        self.logits = None  # nothing to decode from until a landing re-prefills

    def land(self, version: int, chunks: list[Chunk]) -> None:
        """The model now holds weights `version`: the unfinished rows go on under them, `chunks` join."""
        self.version = version
        for chunk in chunks:
            if chunk.key in self.rows:
                raise ValueError(f"chunk {chunk.key!r} is already in the pool")
            if any(len(prompt) == 0 for prompt in chunk.prompts):
                raise ValueError("every prompt needs at least one token")
            rows = [_Row(chunk.key, list(p)) for p in chunk.prompts for _ in range(chunk.group_size)]
            self.rows[chunk.key] = rows
            self.generators[chunk.key] = torch.Generator(self.device).manual_seed(chunk.seed)
            self.active += rows
        if self.active:
            self._prefill()

    def decode(self, steps: int | None) -> list[tuple[Hashable, list[Rollout]]]:
        """`steps` decode steps at most (None: until the pool is empty); the chunks that ended meanwhile."""
        done = []
        was_training = self.backend.model.training
        self.backend.model.eval()
        try:
            with torch.inference_mode():
                taken = 0
                if self.active and self.logits is None:
                    raise RuntimeError(
                        "the pool stopped at a landing (or was restored): it decodes after the next"
                    )
                while self.active and (steps is None or taken < steps):
                    taken += 1
                    # The last step before a landing needs no logits: the landing's prefill computes them.
                    self._step(forward=steps is None or taken < steps)
                    done += self._returned()
        finally:
            self.backend.model.train(was_training)
        return done + self._returned()

    def _prefill(self) -> None:
        """A fresh cache for the unfinished rows, computed by the current weights, and their next logits."""
        sequences = [row.prompt + row.tokens for row in self.active]
        input_ids, self.mask = left_pad(sequences, self.backend.pad_token_id, self.device)
        positions = (self.mask.cumsum(dim=1) - 1).clamp(min=0)
        self.cache = DynamicCache()
        was_training = self.backend.model.training
        self.backend.model.eval()
        try:
            with torch.inference_mode():
                self.logits = self.backend._forward(input_ids, self.mask, positions, self.cache)
        finally:
            self.backend.model.train(was_training)
        self.next_position = positions[:, -1:] + 1

    def _step(self, forward: bool = True) -> None:
        """One token for every unfinished row (each chunk from its own generator); ended rows leave. Then,
        with `forward`, the next logits (else none until the next landing)."""
        eos = self.backend.eos_token_ids
        for key in dict.fromkeys(row.chunk for row in self.active):  # chunks in landing order
            index = torch.tensor(
                [i for i, row in enumerate(self.active) if row.chunk == key], device=self.device
            )
            token, logprob = _draw(
                self.logits[index], self.params.temperature, self.params.top_p, self.generators[key]
            )
            for i, t, lp in zip(index.tolist(), token.tolist(), logprob.tolist(), strict=True):
                row = self.active[i]
                row.tokens.append(t), row.logprobs.append(lp), row.versions.append(self.version)
                row.finished = t in eos
        limit = self.params.max_new_tokens
        keep = [i for i, row in enumerate(self.active) if not row.finished and len(row.tokens) < limit]
        if len(keep) < len(self.active):
            self.active = [self.active[i] for i in keep]
            if not keep:
                return
            kept = torch.tensor(keep, device=self.device)
            self.cache.batch_select_indices(kept)
            self.mask, self.next_position = self.mask[kept], self.next_position[kept]
        if not forward:
            self.logits = None
            return
        tokens = torch.tensor([row.tokens[-1] for row in self.active], device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.active), 1))], dim=1)
        self.logits = self.backend._forward(tokens[:, None], self.mask, self.next_position, self.cache)
        self.next_position = self.next_position + 1

    def _returned(self) -> list[tuple[Hashable, list[Rollout]]]:
        """The chunks none of whose rows is active any more, taken out of the pool."""
        active = {row.chunk for row in self.active}
        done = [key for key in self.rows if key not in active]
        for key in done:
            del self.generators[key]
        return [(key, [_rollout(row) for row in self.rows.pop(key)]) for key in done]


def _rollout(row: _Row) -> Rollout:
    return Rollout(row.prompt, row.tokens, row.logprobs, row.finished, versions=row.versions)
