"""Bounded-staleness asynchronous rollouts: batch n + lag is sampled while batch n is trained.

The schedule is fixed, so a run never depends on timing. Every rollout batch takes k = trainer.mini_batches
x trainer.epochs optimizer steps, and lag = trainer.max_staleness / k rollout batches; batch j is sampled
with the weights after j - 1 - lag updates (W_0, the start, for the first lag + 1 batches):

    step n:  push W_{n-1}, request batch n + lag   (its prompts drawn now, from the run's sampler)
             take batch n                          (sampled with W_{n-1-lag}, in the rollout process)
             update on batch n -> W_n              (while the rollout process samples batch n + 1 ...)

Staleness is counted in optimizer steps: batch n's update starts lag * k optimizer steps after the weights
that sampled it, never more than max_staleness (each request records the optimizer steps behind its
weights, and the trainer checks the difference). Each request carries its own seed (from the run's seed
and the batch's index), so what a batch holds is a function of its weights and prompts alone; the
synchronous loop samples the same requests in its own process (`sample_request`), so lag 0 here is that
loop.

The rollout side is a process with its own copy of the policy (`trainer.num_threads` threads) that samples
with it (rollout=hf) or with a vLLM engine of its own that gets every new copy pushed in (rollout=vllm), and
scores (grading, OSI, rewards, RLR, the KL in the reward against its own copy of the frozen reference,
and dynamic sampling's refill rounds, all with the batch's weights). The weights reach it through a
shared-memory queue (torch.multiprocessing), not disk. Each request reserves its rounds of prompts when it
is made (max_rounds under dynamic sampling); the rounds a batch does not use go back to the run's sampler
when the trainer takes it (lrm_fast/data/sampler.py), so later requests draw them.

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
uninterrupted one would. A rollback by the divergence guard discards the batches in flight and requests
them again with the restored weights (lrm_fast/training/guard.py: which update a bad batch undoes).

On GPU the same schedule drives a vLLM engine on GPUs of its own, which gets the weights by a collective
broadcast (docs/SCALE.md); here the rollout side is the CPU process.
"""

import contextlib
import os
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
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
    version: int  # the weights it is sampled with: those after this step (lrm_fast/training/guard.py)
    rounds: list[list[PromptExample]]  # the first round's prompts, then the refill rounds'
    seed: int
    steps: int = 0  # optimizer steps behind those weights (staleness is counted in them)


@dataclass
class Result:
    index: int
    version: int
    selection: Selection | None  # None: sampling met non-finite logits
    start: float  # time.monotonic() when the rollout side began and ended it (one clock per machine)
    end: float
    steps: int = 0  # the request's


def request_seed(seed: int, *parts: int) -> int:
    """A seed from the run's seed and the batch's index (and a round and rank within it)."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


def lag_of(cfg: TrainConfig) -> int:
    """Rollout batches between a batch's request and its update: max_staleness in optimizer steps over the
    optimizer steps each batch takes (validation makes it a multiple)."""
    return cfg.trainer.max_staleness // (cfg.trainer.mini_batches * cfg.trainer.epochs)


class AsyncRollouts:
    """The trainer's side of the pipeline: requests in order, results by index, the overlap measured."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: torch.nn.Module,
        tokenizer,
        bank: SolutionBank | None,
        ref_model: torch.nn.Module | None = None,
    ):
        """`ref_model`: the frozen reference, copied once into the rollout process when the reward has a
        KL term (reward.kl_coef)."""
        self.lag = lag_of(cfg)
        context = _process_context()
        self._requests, self._results = context.Queue(), context.Queue()
        # The rollout process builds its models from the config (the policy's weights come with the first
        # request): a transformers model that has run a forward does not survive pickling whole (it keeps
        # a flag that its output-capturing hooks are installed, but not the hooks).
        reference = _weights(ref_model) if ref_model is not None and cfg.reward.kl_coef else None
        shape = (model.config, model.generation_config)
        # The rollout process ends when the reading end says the trainer is gone (_exit_with_trainer): only
        # this process holds the writing end, which the kernel closes however it ends.
        alive, self._alive = context.Pipe(duplex=False)
        args = (self._requests, self._results, alive, shape, reference, tokenizer, cfg, bank)
        self.process = context.Process(target=_serve, args=args, daemon=True, name="lrm-fast-rollout")
        self.process.start()
        alive.close()
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
            weights = _weights(model)
            self._version_pushed = request.version
        self._requests.put((request, weights))
        self.sent[request.index] = request
        self.outstanding.append(request)
        self.requested = max(self.requested, request.index)

    def take(self, index: int) -> tuple[Result, Request]:
        """The result of batch `index` and its request, waiting for it if needed."""
        while index not in self.ready:
            self._receive(block=True)
        return self.ready.pop(index), self.sent.pop(index)

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

    def resubmit(self, model: torch.nn.Module, version: int, steps: int) -> None:
        """After a rollback: drop every batch in flight and request it again with the restored weights
        (`version`, `steps` optimizer steps behind them)."""
        self.settle()
        self.ready.clear()
        self._version_pushed = None
        for request in sorted(self.sent.values(), key=lambda r: r.index):
            self.request(Request(request.index, version, request.rounds, request.seed, steps), model)

    def close(self) -> None:
        """Stop the rollout process (it also ends with this one: see _exit_with_trainer)."""
        if self.process.is_alive():
            self._requests.put(None)
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._alive.close()

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


def _process_context():
    """Where rollout processes come from: a fork server that has imported this module and what it uses
    (torch, transformers, math-verify: seconds per start otherwise), so a new process is a fork of a
    process that holds no threads and no CUDA context. Spawn where there is no fork server."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload([__name__, "lrm_fast.training.assembly", "lrm_fast.training.update"])
    return context


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Clones: sending a tensor moves its storage to shared memory, and the trainer's own parameters must
    # not be shared with the process that reads them.
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _model(shape, cfg: TrainConfig, weights: dict | None = None) -> torch.nn.Module:
    """A frozen copy of the policy's architecture (with `weights`, if given)."""
    from lrm_fast.model.causal_lm import build_model

    config, generation_config = shape
    model = build_model(config, attn_implementation=cfg.model.attn_implementation.value)
    model.generation_config = generation_config  # its EOS tokens end a response
    if weights is not None:
        model.load_state_dict(weights)
    return model.eval().requires_grad_(False)


def _serve(requests, results, alive, shape, reference, tokenizer, cfg: TrainConfig, bank) -> None:
    """The rollout process: sample and score each request with the weights sent before it."""
    _exit_with_trainer(alive)
    torch.set_flush_denormal(True)  # as configure_runtime: subnormals slow CPU steps about 10x
    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    from lrm_fast.training.assembly import build_rollout, encode, score  # the trainer's own helpers
    from lrm_fast.training.update import response_log_ratios

    try:
        model = _model(shape, cfg)
        ref_model = _model(shape, cfg, reference) if reference is not None else None
        backend = build_rollout(cfg, model, tokenizer)  # hf: samples with `model`; vllm: an engine of its own

        def generate(examples, params):
            try:
                return backend.generate(encode(examples, tokenizer, cfg), cfg.rollout.group_size, params)
            except NonFiniteError:
                return None

        def log_ratios(samples):
            return response_log_ratios(model, ref_model, samples, cfg.loss, cfg.rollout.temperature)

        kl_of = log_ratios if ref_model is not None else None

        def score_round(examples, rollouts):
            return score(cfg, examples, rollouts, tokenizer, bank, kl_of)

        while (message := requests.get()) is not None:
            request, weights = message
            if weights is not None:
                model.load_state_dict(weights)
                backend.sync_weights(model)  # hf: nothing to do; vllm: the push into the engine
            start = time.monotonic()
            results.put(("started", (request.index, start)))
            selection = sample_request(request, generate, score_round, cfg)
            result = Result(request.index, request.version, selection, start, time.monotonic(), request.steps)
            results.put(("result", result))
    except Exception:
        results.put(("error", traceback.format_exc()))


def sample_request(
    request: Request,
    generate: Callable[[list[PromptExample], SamplingParams], list | None],
    score: Callable[[list[PromptExample], list], ScoredStep],
    cfg: TrainConfig,
    rank: int = 0,
    world_size: int = 1,
    all_full: Callable[[bool], bool] = lambda full: full,
) -> Selection | None:
    """One batch: its first round, and under dynamic sampling its refill rounds, sampled and scored (this
    rank's share of each round's prompts). `generate` returns None when sampling met non-finite logits
    (on any rank); the batch is then None. Each round of each rank has its own seed, from the request's."""
    rounds = iter(enumerate(request.rounds))
    group_size, rollout = cfg.rollout.group_size, cfg.rollout

    def draw() -> ScoredStep | None:
        number, examples = next(rounds)
        examples = examples[rank::world_size]
        seed = request_seed(request.seed, number, rank)
        params = SamplingParams(rollout.max_new_tokens, rollout.temperature, rollout.top_p, seed=seed)
        rollouts = generate(examples, params)
        return None if rollouts is None else score(examples, rollouts)

    if cfg.sampling.name == Sampling.static:
        scored = draw()
        return None if scored is None else static_selection(scored, group_size)
    quota = len(range(rank, cfg.trainer.prompts_per_step, world_size))
    return select_groups(draw, quota, group_size, cfg.sampling, all_full)


def _exit_with_trainer(alive) -> None:
    """End this process as soon as the trainer has ended, however it ended (SIGKILL included): a thread waits
    on the reading end of a pipe whose writing end only the trainer holds, which the kernel closes when the
    trainer's process goes. (The parent-death signal would not do: this process's parent is the fork server,
    which outlives the trainer while a process it started holds the server's own pipe.)"""

    def watch() -> None:
        with contextlib.suppress(EOFError):
            alive.recv()  # nothing is ever sent: it returns by EOFError only
        os._exit(1)

    threading.Thread(target=watch, name="trainer-watch", daemon=True).start()
