"""A rollout worker: a process of its own that samples and scores the batches trainer rank 0 requests.

It joins rank 0's worker group (lrm_fast/runtime/worker_group.py) by address, builds its models from the
config and takes everything else from the control group, in rank 0's order: the weights (a bucket at a
time, whenever they changed) and the requests assigned to it. A thread receives them while the process
samples, so a broadcast never waits for a batch to end; each request is bound to the weights received
before it, which makes what a batch holds a function of its weights and prompts alone, whatever the
timing. It samples every trainer rank's share of a batch, each with that rank's seed, as the synchronous
loop's ranks do, and sends the shares back to rank 0, which hands each rank its own.

The worker samples with its own copy of the policy (rollout=hf) or with a vLLM engine of its own that gets
every new copy pushed in (rollout=vllm), and scores (grading, OSI, rewards, RLR, the KL in the reward
against its own copy of the frozen reference, and dynamic sampling's refill rounds, all with the batch's
weights). Under partial rollouts (rollout.partial_steps) it keeps a pool of unfinished responses across
requests instead (lrm_fast/training/partial_pool.py), and scores a batch with the weights the pool holds when
it ends.
"""

import contextlib
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lrm_fast.config import TrainConfig
from lrm_fast.config.choices import RolloutEngine, Sampling
from lrm_fast.data.examples import PromptExample
from lrm_fast.levers.dynamic_sampling import Selection, select_groups, static_selection
from lrm_fast.levers.scoring import ScoredStep
from lrm_fast.rollout import NonFiniteError, SamplingParams
from lrm_fast.runtime.worker_group import Address, WorkerGroup


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
    selections: list[Selection] | None  # each trainer rank's share; None: sampling met non-finite logits
    start: float  # time.monotonic() when the worker began and ended it (one clock per machine)
    end: float
    steps: int = 0  # the request's
    worker: int = 1  # the worker's group rank
    # Partial rollouts: the response tokens of every share by the optimizer steps behind the weights that
    # sampled them (each token's staleness); None: all sampled with the request's.
    token_steps: dict[int, int] | None = None
    # Partial rollouts: the newest weights that sampled any of its tokens, or whose logits were non-finite
    # (selections None); None: the request's (`version`).
    newest: int | None = None
    device: str = "cpu"  # where the worker's policy sampled it (rollout=vllm: its staging copy's device)

    @property
    def selection(self) -> Selection | None:
        """The share of the rank that took it (AsyncRollouts.take leaves each rank only its own)."""
        return None if self.selections is None else self.selections[0]


def request_seed(seed: int, *parts: int) -> int:
    """A seed from the run's seed and the batch's index (and a round and rank within it)."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


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


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs besides its group: the policy's shape, the reference's weights (the reward's KL
    only), the tokenizer, the config, the solution bank and the number of trainer ranks it samples for."""

    shape: tuple  # (model config, generation config)
    reference: dict | None
    tokenizer: object
    cfg: TrainConfig
    bank: object
    trainer_ranks: int


def serve(
    address: Address,
    rank: int | None = None,
    size: int | None = None,
    alive=None,
    apart: int | None = None,
    devices: str | None = None,
) -> bool:
    """The worker's process: join the group (as `rank` of `size`; None: as worker `apart` of those started
    apart by lrm-fast-rollout-worker, None: the next), take the spec from rank 0, then sample and score each
    request assigned to it, on the GPUs `devices` (CUDA_VISIBLE_DEVICES; None: the CPU). False if it failed
    (rank 0 has been told why)."""
    if devices is not None:  # before anything initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    if alive is not None:
        _exit_with_trainer(alive)
    _leave_trainer_world()
    # First: rank 0 waits for every worker here.
    group = (
        WorkerGroup.join(address, rank, size) if rank is not None else WorkerGroup.join_apart(address, apart)
    )
    spec: WorkerSpec = group.broadcast_object()
    cfg, rank = spec.cfg, group.rank
    torch.set_flush_denormal(True)  # as configure_runtime: subnormals slow CPU steps about 10x
    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=_receive, args=(group, inbox), name="control", daemon=True).start()
    try:
        from lrm_fast.training.partial_pool import PartialPool  # which imports this module

        sampler = Sampler(spec, gpu=devices is not None)
        pool = PartialPool(sampler, rank) if cfg.rollout.partial_steps else None
        while (message := inbox.get()) is not None:
            if isinstance(message, BaseException):
                raise message
            if isinstance(message[0], str):  # partial rollouts: an operation on the pool
                group.send_object(_pool_operation(pool, *message))
                continue
            request, weights = message
            sampler.load(weights)
            group.send_object(("started", (request.index, time.monotonic())))
            for result in _whole(sampler, request, rank) if pool is None else pool.land(request):
                group.send_object(("result", result))
        group.send_object(("bye", None))
        return True
    except Exception:
        group.send_object(("error", traceback.format_exc()))
        return False


def _pool_operation(pool, operation: str, payload=None) -> tuple:
    """A checkpoint's snapshot of the pool, a resume's restore, a rollback's drop; the reply to rank 0."""
    if operation == "snapshot":
        return ("pool", pool.state_dict())
    if operation == "restore":
        pool.load_state_dict(payload)
        return ("restored", None)
    pool.reset()  # "drop": the batches in flight are requested again with the restored weights
    return ("dropped", None)


def _whole(sampler: "Sampler", request: Request, rank: int) -> list[Result]:
    """A request sampled from start to end with its own weights."""
    start = time.monotonic()
    selections = sampler.sample(request)
    end, device = time.monotonic(), str(sampler.device)
    return [
        Result(request.index, request.version, selections, start, end, request.steps, rank, device=device)
    ]


def _receive(group: WorkerGroup, inbox: queue.Queue) -> None:
    """The control group's messages, in rank 0's order: weights (kept as the newest), requests (this worker's
    are queued with the newest weights), operations on a partial-rollout pool (a resume's restore carries
    every worker's pool), the stop (None)."""
    weights = None
    try:
        while (message := group.broadcast_object()) is not None:
            kind, payload = message
            if kind == "weights":
                weights = {}
                for bucket in payload:
                    received = group.broadcast_bucket(None, bucket)
                    weights.update((s.name, t) for s, t in zip(bucket, received, strict=True))
            elif kind in ("snapshot", "drop"):
                inbox.put((kind,))
            elif kind == "restore":
                inbox.put((kind, payload[group.rank]))
            elif payload[1] == group.rank:  # ("request", (request, worker))
                inbox.put((payload[0], weights))
        inbox.put(None)
    except Exception as error:  # the trainer's end went away: the sampling loop reports it
        inbox.put(error)


class Sampler:
    """The worker's models and engine, and one batch sampled for every trainer rank."""

    def __init__(self, spec: WorkerSpec, gpu: bool = False):
        """`gpu`: sample on the first GPU this process sees (rollout=hf; a vLLM engine places itself, and its
        policy copy, which only stages the weights, stays on the CPU)."""
        from lrm_fast.training.assembly import build_rollout, encode, score  # the trainer's own helpers
        from lrm_fast.training.update import response_log_ratios

        cfg, tokenizer = spec.cfg, spec.tokenizer
        self.cfg, self.ranks, self.loaded = cfg, spec.trainer_ranks, None
        if gpu and not torch.cuda.is_available():
            raise RuntimeError(
                f"this rollout worker was given the GPUs {os.environ.get('CUDA_VISIBLE_DEVICES')!r} "
                "(trainer.rollout_devices, or --devices), but torch sees no CUDA device there"
            )
        on_gpu = gpu and cfg.rollout.backend == RolloutEngine.hf
        self.device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
        self.model = _model(spec.shape, cfg).to(self.device)
        ref_model = _model(spec.shape, cfg, spec.reference) if spec.reference is not None else None
        ref_model = ref_model.to(self.device) if ref_model is not None else None
        self.backend = build_rollout(cfg, self.model, tokenizer)  # hf: samples with the model; vllm: engine

        def generate(examples, params):
            try:
                return self.backend.generate(encode(examples, tokenizer, cfg), cfg.rollout.group_size, params)
            except NonFiniteError:
                return None

        def log_ratios(samples):
            return response_log_ratios(self.model, ref_model, samples, cfg.loss, cfg.rollout.temperature)

        kl_of = log_ratios if ref_model is not None else None
        self.generate, self.tokenizer = generate, tokenizer
        self.score = lambda examples, rollouts: score(cfg, examples, rollouts, tokenizer, spec.bank, kl_of)

    def load(self, weights: dict | None) -> None:
        if weights is not None and weights is not self.loaded:
            self.model.load_state_dict(weights)
            self.backend.sync_weights(self.model)  # hf: nothing to do; vllm: the push into the engine
            self.loaded = weights

    def sample(self, request: Request) -> list[Selection] | None:
        """Each trainer rank's share, with that rank's seeds; None if any met non-finite logits."""
        selections = [
            sample_request(request, self.generate, self.score, self.cfg, rank, self.ranks)
            for rank in range(self.ranks)
        ]
        return None if any(s is None for s in selections) else selections


def _model(shape, cfg: TrainConfig, weights: dict | None = None) -> torch.nn.Module:
    """A frozen copy of the policy's architecture (with `weights`, if given)."""
    from lrm_fast.model.causal_lm import build_model

    config, generation_config = shape
    model = build_model(config, attn_implementation=cfg.model.attn_implementation.value)
    model.generation_config = generation_config  # its EOS tokens end a response
    if weights is not None:
        model.load_state_dict(weights)
    return model.eval().requires_grad_(False)


# torchrun's description of the trainers' world, which a worker started by rank 0 inherits but is no rank of.
_TRAINER_WORLD = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                  "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # fmt: skip


def _leave_trainer_world() -> None:
    """Forget torchrun's variables: a vLLM engine in this process makes a world of its own (of one), and must
    not take these for its own."""
    for key in [k for k in os.environ if k in _TRAINER_WORLD or k.startswith("TORCHELASTIC_")]:
        del os.environ[key]


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
