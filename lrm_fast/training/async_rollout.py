"""Bounded-staleness asynchronous rollouts: batch n + lag is sampled while batch n is trained.

The schedule is fixed, so a run never depends on timing. With `lag` = trainer.max_staleness /
trainer.mini_batches rollout batches, batch j is sampled with the weights after j - 1 - lag updates
(W_0, the start, for the first lag + 1 batches):

    step n:  push W_{n-1}, request batch n + lag   (its prompts drawn now, from the run's sampler)
             take batch n                          (sampled with W_{n-1-lag}, in the rollout process)
             update on batch n -> W_n              (while the rollout process samples batch n + 1 ...)

A policy version is one optimizer step, so batch n is trained lag * mini_batches versions after the
weights that sampled it: never more than max_staleness. Each request carries its own seed (from the run's
seed and the batch's index), so what a batch holds is a function of its weights and prompts alone.

The rollout side is a process with its own copy of the policy (`trainer.num_threads` threads) that samples
with it (rollout=hf) or with a vLLM engine of its own that gets every new copy pushed in (rollout=vllm), and
scores (grading, OSI, rewards, RLR, and dynamic sampling's refill rounds, all with the
batch's weights). The weights reach it through a shared-memory queue (torch.multiprocessing), not disk.
With dynamic sampling each request reserves max_rounds rounds of prompts when it is made; the rounds a
batch does not need are skipped, so a prompt order differs from the synchronous loop's.

Off-policy correction (decoupled PPO, as in AReaL; Hilton et al. 2022): with behaviour policy mu (the
weights that sampled, whose log-probs the sampler returns), the proximal policy pi_prox (the weights at the
start of the batch's update; their log-probs are recorded there, or are the current ones with one
optimizer step) and the policy pi_theta being trained, each response token t contributes

    w_t * min(pi_prox(t) / mu(t), tis_cap) * max(-A rho_t, -A clip(rho_t, 1 - eps_low, 1 + eps_high)),
    rho_t = pi_theta(t) / pi_prox(t)

so the clip acts against pi_prox, as in the synchronous loop, and the truncated importance ratio (the
existing rollout.tis_cap; null: no cap, the weight is still applied) moves the gradient from mu's
samples to pi_prox
(lrm_fast/training/update.py: sampler_correction and _token_weights compute exactly this).

Checkpoints: the batches requested but not yet trained are awaited and saved with the checkpoint (they
were sampled with weights the checkpoint no longer holds), so a resumed run trains exactly what the
uninterrupted one would. A step rolled back by the divergence guard discards the batches in flight and
requests them again with the restored weights.

On GPU the same schedule drives a vLLM engine on GPUs of its own, which gets the weights by a collective
broadcast (docs/SCALE.md); here the rollout side is the CPU process.
"""

import contextlib
import ctypes
import queue
import signal
import time
import traceback
from collections import deque
from copy import deepcopy
from dataclasses import dataclass

import numpy as np
import torch
import torch.multiprocessing as mp

from lrm_fast.config import TrainConfig
from lrm_fast.config.choices import Sampling
from lrm_fast.data.examples import PromptExample
from lrm_fast.levers.dynamic_sampling import Selection, select_groups, static_selection
from lrm_fast.levers.injection import SolutionBank
from lrm_fast.levers.scoring import ScoredStep
from lrm_fast.rollout import NonFiniteError, SamplingParams

# How often a waiting side checks that the other is still alive (seconds).
POLL_S = 0.5


@dataclass
class Request:
    index: int  # the rollout batch: the step that trains it
    version: int  # rollout updates behind the weights it is sampled with
    rounds: list[list[PromptExample]]  # the first round's prompts, then the refill rounds'
    seed: int


@dataclass
class Result:
    index: int
    version: int
    selection: Selection | None  # None: sampling met non-finite logits
    start: float  # time.monotonic() when the rollout side began and ended it (one clock per machine)
    end: float


def request_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class AsyncRollouts:
    """The trainer's side of the pipeline: requests in order, results by index, the overlap measured."""

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, tokenizer, bank: SolutionBank | None):
        self.lag = cfg.trainer.max_staleness // cfg.trainer.mini_batches
        context = mp.get_context("spawn")
        self._requests, self._results = context.Queue(), context.Queue()
        worker_model = deepcopy(model).eval().requires_grad_(False)
        args = (self._requests, self._results, worker_model, tokenizer, cfg, bank)
        self.process = context.Process(target=_serve, args=args, daemon=True, name="lrm-fast-rollout")
        self.process.start()
        self.requested = 0  # batches requested so far (the highest index)
        self.outstanding: deque[Request] = deque()  # requested, result not yet received
        self.ready: dict[int, Result] = {}
        self.sent: dict[int, Request] = {}  # every request whose batch is not trained yet
        self._started: dict[int, float] = {}
        self._version_pushed: int | None = None

    def request(self, request: Request, model: torch.nn.Module) -> None:
        """Queue `request`, with the current weights first if they are newer than the last ones sent."""
        weights = None
        if request.version != self._version_pushed:
            # Clones: sending a tensor moves its storage to shared memory, and the trainer's own
            # parameters must not be shared with the process that reads them.
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self._version_pushed = request.version
        self._requests.put((request, weights))
        self.sent[request.index] = request
        self.outstanding.append(request)
        self.requested = max(self.requested, request.index)

    def take(self, index: int) -> Result:
        """The result of batch `index`, waiting for it if needed."""
        while index not in self.ready:
            self._receive(block=True)
        self.sent.pop(index, None)
        return self.ready.pop(index)

    def overlap(self, start: float, end: float) -> float:
        """Seconds of [start, end] (an update) during which the rollout side was sampling."""
        while self._receive(block=False):
            pass
        spans = [(r.start, r.end) for r in self.ready.values()] + [(s, end) for s in self._started.values()]
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)

    def settle(self) -> list[Result]:
        """Wait for every outstanding batch; the results not yet trained, by index (for a checkpoint)."""
        while self.outstanding:
            self._receive(block=True)
        return [self.ready[i] for i in sorted(self.ready)]

    def state_dict(self) -> dict:
        """The batches requested and not yet trained, with their results (waits for them)."""
        return {"results": self.settle(), "requests": [self.sent[i] for i in sorted(self.sent)]}

    def load_state_dict(self, state: dict) -> None:
        self.ready = {r.index: r for r in state["results"]}
        self.sent = {r.index: r for r in state["requests"]}
        self.requested = max(self.sent, default=0)

    def resubmit(self, model: torch.nn.Module, version: int) -> None:
        """After a rollback: drop every batch in flight and request it again with the restored weights."""
        self.settle()
        self.ready.clear()
        self._version_pushed = None
        for request in sorted(self.sent.values(), key=lambda r: r.index):
            self.request(Request(request.index, version, request.rounds, request.seed), model)

    def close(self) -> None:
        """Stop the rollout process (it also dies with this one: see _serve)."""
        if self.process.is_alive():
            self._requests.put(None)
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    def _receive(self, block: bool) -> bool:
        """Handle one message from the rollout side; False when none came (non-blocking)."""
        while True:
            try:
                message = self._results.get(timeout=POLL_S if block else 0.001)
                break
            except queue.Empty:
                if not self.process.is_alive():
                    raise RuntimeError(
                        f"the rollout process exited (code {self.process.exitcode}) with batches in flight"
                    ) from None
                if not block:
                    return False
        kind, payload = message
        if kind == "error":
            raise RuntimeError(f"the rollout process failed:\n{payload}")
        if kind == "started":
            self._started[payload[0]] = payload[1]
            return True
        self._started.pop(payload.index, None)
        self.outstanding = deque(r for r in self.outstanding if r.index != payload.index)
        self.ready[payload.index] = payload
        return True


def _serve(requests, results, model, tokenizer, cfg: TrainConfig, bank) -> None:
    """The rollout process: sample and score each request with the weights sent before it."""
    _die_with_parent()
    torch.set_flush_denormal(True)  # as configure_runtime: subnormals slow CPU steps about 10x
    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    from lrm_fast.training.assembly import build_rollout  # the trainer's own choice of engine

    try:
        backend = build_rollout(cfg, model, tokenizer)  # hf: samples with `model`; vllm: an engine of its own
        while (message := requests.get()) is not None:
            request, weights = message
            if weights is not None:
                model.load_state_dict(weights)
                backend.sync_weights(model)  # hf: nothing to do; vllm: the push into the engine
            start = time.monotonic()
            results.put(("started", (request.index, start)))
            selection = sample_request(request, backend, tokenizer, cfg, bank)
            results.put(
                ("result", Result(request.index, request.version, selection, start, time.monotonic()))
            )
    except Exception:
        results.put(("error", traceback.format_exc()))


def sample_request(request: Request, backend, tokenizer, cfg: TrainConfig, bank) -> Selection | None:
    """One batch: its first round, and under dynamic sampling its refill rounds, sampled and scored."""
    from lrm_fast.training.assembly import encode, score  # the training package's own helpers

    rounds = iter(enumerate(request.rounds))
    group_size = cfg.rollout.group_size

    def draw() -> ScoredStep | None:
        number, examples = next(rounds)
        rollout = cfg.rollout
        seed = request_seed(request.seed, number)
        params = SamplingParams(rollout.max_new_tokens, rollout.temperature, rollout.top_p, seed=seed)
        try:
            rollouts = backend.generate(encode(examples, tokenizer, cfg), group_size, params)
        except NonFiniteError:
            return None
        return score(cfg, examples, rollouts, tokenizer, bank)

    if cfg.sampling.name == Sampling.static:
        scored = draw()
        return None if scored is None else static_selection(scored, group_size)
    return select_groups(draw, cfg.trainer.prompts_per_step, group_size, cfg.sampling)


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the trainer dies, however it dies (SIGKILL included)."""
    # Not Linux (no libc.so.6): close() still stops it, and a daemon process ends with a clean exit.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
