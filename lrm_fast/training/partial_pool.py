"""A rollout worker's requests under partial rollouts (rollout.partial_steps): one pool of responses that
decodes across weight landings (lrm_fast/rollout/partial.py has the decoder and the choices made).

A request lands with its weights, then the pool decodes `rollout.partial_steps` decode steps (fewer if it
empties) before the worker takes its next message. Rank 0 may also ask for the pool itself: a checkpoint saves
it (its rows, their order, each chunk's generator state, the requests in it) and a resume restores it, so a
resumed run samples exactly what the uninterrupted one did, whatever trainer.checkpoint_every; a rollback
drops it, and the batches in flight are requested again with the restored weights.

Each trainer rank's share of a request is a chunk of its own, seeded as the synchronous loop seeds that
share. A request comes back once every share has ended, scored with the weights the pool then holds (the
reward's KL term, where there is one, uses them), with the newest version that sampled any of its tokens
(what a finite batch confirms to the divergence guard, lrm_fast/training/guard.py). Non-finite logits end
every request in the pool with no batch, blamed on the weights that gave them (the trainer skips the step
and rolls their update back, which resubmits the others).
"""

import time
from collections import Counter

from lrm_fast.levers.dynamic_sampling import static_selection
from lrm_fast.rollout import NonFiniteError, SamplingParams
from lrm_fast.rollout.partial import Chunk, PartialDecoder
from lrm_fast.training.assembly import encode
from lrm_fast.training.rollout_worker import Request, Result, request_seed


class PartialPool:
    def __init__(self, sampler, rank: int):
        """`sampler`: the worker's models and scoring (rollout_worker.Sampler); `rank`: its group rank."""
        self.sampler, self.rank, self.cfg = sampler, rank, sampler.cfg
        self.decoder = self._decoder()
        self.landed: dict[int, tuple[Request, float]] = {}  # requests in the pool, with their landing times
        self.shares: dict[int, dict[int, list]] = {}  # each request's ended shares, by trainer rank
        self.steps_of: dict[int, int] = {}  # optimizer steps behind each version in the pool

    def state_dict(self) -> dict:
        landed = {i: request for i, (request, _) in self.landed.items()}
        return {"decoder": self.decoder.state_dict(), "landed": landed, "shares": self.shares,
                "steps_of": self.steps_of}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.decoder.load_state_dict(state["decoder"])
        now = time.monotonic()  # the saved process's clock means nothing here
        self.landed = {i: (request, now) for i, request in state["landed"].items()}
        self.shares, self.steps_of = state["shares"], state["steps_of"]

    def reset(self) -> None:
        """An empty pool (its requests answered by nothing)."""
        self.decoder = self._decoder()
        self.landed, self.shares, self.steps_of = {}, {}, {}

    def _decoder(self) -> PartialDecoder:
        rollout = self.cfg.rollout
        params = SamplingParams(rollout.max_new_tokens, rollout.temperature, rollout.top_p)
        return PartialDecoder(self.sampler.backend, params)

    def land(self, request: Request) -> list[Result]:
        """`request` joins with the weights just loaded; then `partial_steps` decode steps."""
        cfg, ranks = self.cfg, self.sampler.ranks
        self.landed[request.index] = (request, time.monotonic())
        self.shares[request.index] = {}
        self.steps_of[request.version] = request.steps
        chunks = [
            Chunk(
                (request.index, rank),
                encode(request.rounds[0][rank::ranks], self.sampler.tokenizer, cfg),
                cfg.rollout.group_size,
                request_seed(request.seed, 0, rank),
            )
            for rank in range(ranks)
        ]
        try:
            self.decoder.land(request.version, chunks)
        except NonFiniteError:
            return self._fail()
        return self.decode(cfg.rollout.partial_steps)

    def decode(self, steps: int | None) -> list[Result]:
        """`steps` decode steps (None: until the pool is empty); the requests that ended meanwhile."""
        try:
            ended = self.decoder.decode(steps)
        except NonFiniteError:
            return self._fail()
        results = []
        for (index, rank), rollouts in ended:
            self.shares[index][rank] = rollouts
            if len(self.shares[index]) == self.sampler.ranks:
                results.append(self._result(index))
        if not self.landed:  # no older version's tokens remain in the pool
            self.steps_of = {v: n for v, n in self.steps_of.items() if v == self.decoder.version}
        return results

    def _result(self, index: int) -> Result:
        """Request `index`'s shares, scored."""
        request, start = self.landed.pop(index)
        shares = self.shares.pop(index)
        selections, tokens, versions = [], Counter(), Counter()
        for rank in range(self.sampler.ranks):
            examples = request.rounds[0][rank :: self.sampler.ranks]
            scored = self.sampler.score(examples, shares[rank])
            selections.append(static_selection(scored, self.cfg.rollout.group_size))
            versions.update(v for rollout in shares[rank] for v in rollout.versions)
        tokens = Counter()  # two versions have the same optimizer steps when a step between them took none
        for version, count in versions.items():
            tokens[self.steps_of[version]] += count
        return Result(
            request.index, request.version, selections, start, time.monotonic(), request.steps, self.rank,
            token_steps=dict(tokens), newest=max(versions, default=request.version),
            device=str(self.sampler.device),
        )  # fmt: skip

    def _fail(self) -> list[Result]:
        """No batch for any request in the pool (non-finite logits), and an empty pool."""
        now, bad = time.monotonic(), self.decoder.version
        results = [
            Result(r.index, r.version, None, start, now, r.steps, self.rank, newest=bad)
            for r, start in self.landed.values()
        ]
        self.reset()
        return results
