"""Bounded-staleness asynchronous rollouts: batch n + lag is sampled while batch n is trained.

The schedule is fixed, so a run never depends on timing. Every rollout batch takes k = trainer.mini_batches
x trainer.epochs optimizer steps, and lag = trainer.max_staleness / k rollout batches; batch j is sampled
with the weights after j - 1 - lag updates (W_0, the start, for the first lag + 1 batches):

    step n:  push W_{n-1}, request batch n + lag   (its prompts drawn now, from the run's sampler)
             take batch n                          (sampled with W_{n-1-lag}, by a rollout worker)
             update on batch n -> W_n              (while the workers sample batch n + 1 ...)

Staleness is counted in optimizer steps: batch n's update starts lag * k optimizer steps after the weights
that sampled it, never more than max_staleness (each request records the optimizer steps behind its
weights, and the trainer checks the difference). Each request carries its own seed (from the run's seed
and the batch's index), so what a batch holds is a function of its weights and prompts alone; the
synchronous loop samples the same requests in its own process (`sample_request`), so lag 0 here is that
loop.

The rollout side is `trainer.rollout_workers` worker processes (lrm_fast/training/rollout_worker.py, each
with `trainer.num_threads` threads) that trainer rank 0 starts; they sample and score every trainer rank's
share of a batch. Rank 0 talks to them over gloo groups of their own (lrm_fast/runtime/worker_group.py),
apart from the trainers' default group: requests and the weights (gathered from the FSDP2 shards a bucket
at a time by every trainer rank, broadcast by rank 0) go out, results come back, and rank 0 hands each
trainer rank its share. One trainer process with one worker is the same code. Each request reserves its
rounds of prompts when it is made (max_rounds under dynamic sampling); the rounds a batch does not use go
back to the run's sampler when the trainer takes it (lrm_fast/data/sampler.py), so later requests draw
them.

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

Partial rollouts (rollout.partial_steps, lrm_fast/rollout/partial.py): a worker keeps one pool of unfinished
responses, and each request lands with its weights every partial_steps decode steps; a batch's long responses
go on with the next batch's weights, beside its first tokens, rather than keeping the worker at a small batch
until they end. Its tokens are at most as old as the schedule above allows (later weights only make them
fresher), each with its own weights' log-prob for the correction. A checkpoint saves the workers' pools
(and a resume restores them), so it changes nothing that is sampled; a rollback drops them.

Workers may also be started apart, on other hosts (trainer.remote_rollout_workers, lrm-fast-rollout-worker
--address HOST:trainer.rollout_port): they join the same groups and receive the same spec.

A worker that dies stops the run: rank 0 names it ("rollout worker 1 (pid N): the rollout process
exited") within POLL_S of waiting on it, or at the next broadcast that fails (a worker started apart: by its
closed connection); torchrun ends the other ranks, and the workers end with rank 0's process. The last
checkpoint resumes exactly. Placement on GPUs, and why workers join by address rather than as ranks of
torchrun's world: docs/SCALE.md.
"""

import contextlib
import dataclasses
import logging
import queue
import socket
import threading
import time
import traceback
from collections import deque

import torch
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor

from lrm_fast.config import TrainConfig, TrainerConfig
from lrm_fast.levers.injection import SolutionBank
from lrm_fast.runtime import DistInfo
from lrm_fast.runtime.worker_group import TIMEOUT, TensorSpec, WorkerGroup, buckets, host_store
from lrm_fast.training.rollout_worker import Request, Result, WorkerSpec, request_seed, sample_request, serve
from lrm_fast.training.step_metrics import covered_seconds

__all__ = [
    "AsyncRollouts",
    "Request",
    "Result",
    "lag_of",
    "request_seed",
    "sample_request",
]

# How often a waiting side checks that the other is still alive (seconds).
POLL_S = 0.5


def lag_of(cfg: TrainConfig) -> int:
    """Rollout batches between a batch's request and its update: max_staleness in optimizer steps over the
    optimizer steps each batch takes (validation makes it a multiple)."""
    return cfg.trainer.max_staleness // (cfg.trainer.mini_batches * cfg.trainer.epochs)


class AsyncRollouts:
    """The trainer's side of the pipeline, on every trainer rank: requests in order, results by index, the
    overlap measured. Rank 0 starts the workers and talks to them; every rank takes part in gathering the
    weights from their FSDP2 shards and gets its own share of each batch from rank 0."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: torch.nn.Module,
        tokenizer,
        bank: SolutionBank | None,
        ref_model: torch.nn.Module | None = None,
        dist: DistInfo | None = None,
    ):
        """`ref_model`: the frozen reference, copied once into each worker when the reward has a KL term
        (reward.kl_coef)."""
        self.cfg, self.lag, self.partial = cfg, lag_of(cfg), cfg.rollout.partial_steps is not None
        self._replies: dict[int, object] = {}  # each worker's reply to the last operation on its pool
        self.dist = dist or DistInfo(0, 1, torch.device("cpu"))
        self.bucket_bytes = cfg.rollout.sync_bucket_mb << 20
        # The workers build their models from the config (the policy's weights come with the first request):
        # a transformers model that has run a forward does not survive pickling whole (it keeps a flag that
        # its output-capturing hooks are installed, but not the hooks).
        with_reference = ref_model is not None and cfg.reward.kl_coef
        reference = _full_state(ref_model, keep=self.dist.is_main) if with_reference else None
        # Rank 0 waits on the workers outside any collective; the other ranks wait for it on this gloo group,
        # whose timeout allows a whole batch (NCCL's watchdog would end such a wait in the default group).
        self._trainers = None
        if self.dist.world_size > 1:
            self._trainers = torch.distributed.new_group(backend="gloo", timeout=TIMEOUT)
        self.workers, self.group, self._broken = [], None, False
        self.worker_count = 0  # rank 0's: those it started and those started apart
        if self.dist.is_main:
            spec = WorkerSpec(
                (model.config, model.generation_config), reference, tokenizer, cfg, bank, self.dist.world_size
            )
            self._start_workers(cfg.trainer, spec)
        self.requested = 0  # batches requested so far (the highest index)
        self.outstanding: deque[Request] = deque()  # requested, result not yet received (rank 0)
        self.ready: dict[int, Result] = {}
        self.sent: dict[int, Request] = {}  # every request whose batch is not trained yet
        self._started: dict[int, tuple[float, int]] = {}  # batch: (its start, its worker)
        self._version_pushed: int | None = None
        self.pushed = {"bytes": 0, "seconds": 0.0}  # every weight push so far (this run's process)
        self._pushed_logged = dict(self.pushed)
        self._barrier()  # the others wait while rank 0 waits for its workers to join (up to JOIN_TIMEOUT)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.workers]

    def describe(self) -> str:
        """The run log's line about the workers."""
        trainer = self.cfg.trainer
        apart = (
            f" and {trainer.remote_rollout_workers} started apart" if trainer.remote_rollout_workers else ""
        )
        return (
            f"[async] rollout process {', '.join(map(str, self.pids)) or '(none here)'}{apart}: batches "
            f"sampled with weights up to {trainer.max_staleness} optimizer steps older than their update's"
        )

    def _start_workers(self, trainer: TrainerConfig, spec: WorkerSpec) -> None:
        """Start trainer.rollout_workers processes, wait for them and the remote ones, send them the spec."""
        context = _process_context()
        count, remote = trainer.rollout_workers, trainer.remote_rollout_workers
        self.worker_count = count + remote
        store, address = host_store(count, remote, trainer.rollout_port)
        if remote:
            logging.getLogger(__name__).info(
                "[async] rank 0 waits for %d rollout worker(s): lrm-fast-rollout-worker --address %s:%d",
                remote, socket.getfqdn(), store.port,
            )  # fmt: skip
        # A worker ends when the reading end says the trainer is gone (_exit_with_trainer): only this process
        # holds the writing end, which the kernel closes however it ends.
        self._alive = []
        for rank in range(1, count + 1):
            alive, keep = context.Pipe(duplex=False)
            devices = trainer.rollout_devices[rank - 1] if trainer.rollout_devices else None
            process = context.Process(
                target=serve,
                args=(address, rank, self.worker_count + 1, alive, None, devices),
                daemon=True,
                name=f"lrm-fast-rollout-{rank}",
            )
            process.start()
            alive.close()
            self.workers.append(process)
            self._alive.append(keep)
        self.group = self._join(store, self.worker_count + 1)
        self._guarded(lambda: self.group.broadcast_object(spec))
        self._results: queue.Queue = queue.Queue()
        threading.Thread(target=self._listen, name="rollout-results", daemon=True).start()

    def _join(self, store, size: int) -> WorkerGroup:
        """Rank 0's end of the worker group, once every worker has joined; a worker that dies first is named
        within POLL_S (the join itself would wait JOIN_TIMEOUT)."""
        joined: queue.Queue = queue.Queue()

        def join() -> None:
            try:
                joined.put(WorkerGroup(store, 0, size))
            except Exception as error:  # handed to the waiting thread
                joined.put(error)

        threading.Thread(target=join, name="rollout-join", daemon=True).start()
        while True:
            try:
                group = joined.get(timeout=POLL_S)
                break
            except queue.Empty:
                self._check_workers("before joining")
        if isinstance(group, Exception):
            raise RuntimeError("the rollout workers did not join rank 0's worker group") from group
        return group

    def push_metrics(self) -> dict[str, float]:
        """Bytes and seconds of the weight pushes since the last call (a step's: its requests', and a
        rollback's resubmission)."""
        bytes_, seconds = (self.pushed[k] - self._pushed_logged[k] for k in ("bytes", "seconds"))
        self._pushed_logged = dict(self.pushed)
        return {"async/push_bytes": float(bytes_), "async/push_s": seconds}

    def request(self, request: Request, model: torch.nn.Module) -> None:
        """Queue `request`, with the current weights first if they are newer than the last ones sent (every
        trainer rank calls this: the weights are gathered from all of them)."""
        if request.version != self._version_pushed:
            self._push(model)
            self._version_pushed = request.version
        if self.group is not None:
            worker = 1 + request.index % self.worker_count
            self._control(("request", (request, worker)))
            self.outstanding.append(request)
        self.sent[request.index] = request
        self.requested = max(self.requested, request.index)

    def _push(self, model: torch.nn.Module) -> None:
        """The policy's weights to every worker: gathered from the shards a bucket at a time (all ranks),
        broadcast by rank 0."""
        tick = time.perf_counter()
        state = model.state_dict()
        specs = [TensorSpec(name, tuple(value.shape), value.dtype) for name, value in state.items()]
        planned = buckets(specs, self.bucket_bytes)
        self._control(("weights", planned))
        for bucket in planned:
            tensors = [_full(state[s.name]) for s in bucket]
            if self.group is not None:
                self._guarded(lambda t=tensors, b=bucket: self.group.broadcast_bucket(t, b))
        self.pushed["bytes"] += sum(s.nbytes for s in specs)
        self.pushed["seconds"] += time.perf_counter() - tick

    def _control(self, message) -> None:
        if self.group is not None:
            self._guarded(lambda: self.group.broadcast_object(message))

    def take(self, index: int) -> tuple[Result, Request]:
        """The result of batch `index` (its `selections` hold this rank's share only) and its request,
        waiting for it if needed."""
        result = None
        if self.dist.is_main:
            while index not in self.ready:
                self._receive(block=True)
            result = self.ready.pop(index)
        if self.dist.world_size > 1:
            result = _scatter(result, self.dist.world_size, self._trainers)
        return result, self.sent.pop(index)

    def overlap(self, start: float, end: float) -> float:
        """Seconds of [start, end] (an update) during which a worker on this host was sampling (rank 0's
        count: a worker started apart keeps another host's clock)."""
        if not self.dist.is_main:
            return 0.0
        while self._receive(block=False):
            pass
        here = len(self.workers)
        spans = [(r.start, r.end) for r in self.ready.values() if r.worker <= here]
        spans += [(s, end) for s, worker in self._started.values() if worker <= here]
        return covered_seconds(spans, start, end)

    def settle(self) -> list[Result]:
        """Wait for every outstanding batch (every rank waits for rank 0); the results not yet trained, by
        index (for a checkpoint; rank 0 holds them all). Partial rollouts: the batches in the workers' pools
        stay there (see state_dict)."""
        if self.partial:
            self._ask_workers("snapshot")  # whatever the workers sent before it has arrived
        else:
            while self.outstanding:
                self._receive(block=True)
        self._barrier()
        return [self.ready[i] for i in sorted(self.ready)]

    def _barrier(self) -> None:
        """Every trainer rank waits here for rank 0, on a gloo group whose timeout allows a batch (NCCL's
        watchdog on the default group would end a wait for the workers)."""
        if self._trainers is not None:
            torch.distributed.barrier(group=self._trainers)

    def state_dict(self) -> dict:
        """The batches requested and not yet trained, with their results (rank 0's; waits for them), and under
        partial rollouts each worker's pool, which holds the rest."""
        return {
            "results": self.settle(),
            "requests": [self.sent[i] for i in sorted(self.sent)],
            "trainer_ranks": self.dist.world_size,  # each result holds one share per rank
            "pools": self._replies if self.partial and self.dist.is_main else None,
        }

    def load_state_dict(self, state: dict) -> None:
        ranks = state.get("trainer_ranks", 1)
        if state["requests"] and ranks != self.dist.world_size:
            raise ValueError(
                f"the checkpoint holds {len(state['requests'])} batches in flight, sampled as {ranks} "
                f"trainer ranks' shares: resume it with {ranks} ranks (torchrun --nproc-per-node {ranks}), "
                f"not {self.dist.world_size}"
            )
        self.ready = {r.index: _current(r) for r in state["results"]}
        self.sent = {r.index: r for r in state["requests"]}
        self.requested = max(self.sent, default=0)
        self._restore_pools(state.get("pools"))
        if self.partial:  # the other ranks cannot tell whether rank 0 restores pools: all wait
            self._barrier()

    def _restore_pools(self, pools: dict | None) -> None:
        """The partial-rollout pools of a checkpoint back into the workers that held them (rank 0)."""
        if not self.dist.is_main or not any(pool["landed"] for pool in (pools or {}).values()):
            return  # no batch in any pool (or none saved): the workers start empty
        if not self.partial or len(pools) != self.worker_count:
            raise ValueError(
                f"the checkpoint holds batches in the partial-rollout pools of {len(pools)} rollout "
                "worker(s): resume it with rollout.partial_steps set and as many workers "
                f"(trainer.rollout_workers + trainer.remote_rollout_workers = {len(pools)})"
            )
        self.outstanding = deque(self.sent[i] for i in sorted(self.sent) if i not in self.ready)
        self._ask_workers("restore", pools)

    def _ask_workers(self, operation: str, payload=None) -> None:
        """An operation on every worker's partial-rollout pool; their replies (by worker) in self._replies."""
        if self.group is None:
            return
        self._replies = {}
        self._control((operation, payload))
        while len(self._replies) < self.worker_count:
            self._receive(block=True)

    def resubmit(self, model: torch.nn.Module, version: int, steps: int) -> None:
        """After a rollback: drop every batch in flight and request it again with the restored weights
        (`version`, `steps` optimizer steps behind them)."""
        if self.partial:
            self._ask_workers("drop")  # the pools emptied, and every result sent before has arrived
            self.outstanding.clear()
            self._barrier()
        else:
            self.settle()
        self.ready.clear()
        self._version_pushed = None
        for request in sorted(self.sent.values(), key=lambda r: r.index):
            self.request(Request(request.index, version, request.rounds, request.seed, steps), model)

    def close(self) -> None:
        """Stop the workers (they also end with this process: see _exit_with_trainer)."""
        if self.group is not None and not self._broken and all(p.is_alive() for p in self.workers):
            with contextlib.suppress(RuntimeError):  # a worker went away meanwhile: it is killed below
                self.group.broadcast_object(None)
        for process in self.workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        for keep in getattr(self, "_alive", []):
            keep.close()

    def _listen(self) -> None:
        """Rank 0's thread that receives the workers' messages until each has said goodbye."""
        remaining = self.worker_count
        while remaining:
            try:
                source, message = self.group.recv_object()
            except Exception:  # a closed connection, most often: _receive reports it
                self._results.put((0, ("lost", traceback.format_exc())))
                return
            if message[0] == "bye":
                remaining -= 1
            else:
                self._results.put((source, message))

    def _receive(self, block: bool) -> bool:
        """Handle one message from a worker; False when none came (non-blocking)."""
        while True:
            try:
                source, (kind, payload) = self._results.get(timeout=POLL_S if block else 0.001)
                break
            except queue.Empty:
                self._check_workers()
                if not block:
                    return False
        if kind == "error":
            raise RuntimeError(f"rollout worker {source} ({self._where(source)}) failed:\n{payload}")
        if kind == "lost":
            time.sleep(POLL_S)  # a worker that died closed the connection: let its exit code be known
            self._check_workers()
            raise RuntimeError(f"rank 0 stopped receiving from the rollout workers:\n{payload}")
        if kind == "started":
            self._started[payload[0]] = (payload[1], source)
            return True
        if kind in ("pool", "restored", "dropped"):  # the reply to an operation on the pools
            self._replies[source] = payload
            return True
        self._started.pop(payload.index, None)
        self.outstanding = deque(r for r in self.outstanding if r.index != payload.index)
        self.ready[payload.index] = payload
        return True

    def _where(self, source: int) -> str:
        """A worker's process id, or that it was started apart."""
        return f"pid {self.workers[source - 1].pid}" if source <= len(self.workers) else "started apart"

    def _check_workers(self, when: str = "with batches in flight") -> None:
        for rank, process in enumerate(self.workers, start=1):
            if not process.is_alive():
                raise RuntimeError(
                    f"rollout worker {rank} (pid {process.pid}): the rollout process exited "
                    f"(code {process.exitcode}) {when}"
                )

    def _guarded(self, call):
        """A collective with the workers; a dead worker's broken connection is reported by its name (one
        started apart has no process here to name)."""
        try:
            return call()
        except Exception as error:
            self._broken = True  # the workers may be inside a broadcast: no goodbye on close
            self._raise_reported()
            self._check_workers()
            raise RuntimeError("rank 0 lost the connection to the rollout workers in a broadcast") from error

    def _raise_reported(self) -> None:
        """A worker's own report of why it failed, if one comes within 2 POLL_S: a worker sends it before it
        exits, which is what broke the broadcast."""
        deadline = time.monotonic() + 2 * POLL_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                source, (kind, payload) = self._results.get(timeout=left)
            except queue.Empty:
                return
            if kind == "error":
                raise RuntimeError(f"rollout worker {source} ({self._where(source)}) failed:\n{payload}")


def _full(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 shard (an all-gather on every trainer rank), or the tensor itself."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def _full_state(model: torch.nn.Module, keep: bool) -> dict[str, torch.Tensor] | None:
    """The whole state on the CPU, a tensor at a time (every rank gathers; only `keep` holds the copy)."""
    state = {}
    for name, value in model.state_dict().items():
        full = _full(value).detach()
        if keep:
            state[name] = full.to("cpu", copy=True)
    return state if keep else None


def _current(result: Result) -> Result:
    """A result as saved by a checkpoint from before results held every rank's share (`selection`)."""
    if "selections" not in vars(result):
        selection = vars(result).pop("selection", None)
        result.selections = None if selection is None else [selection]
        result.worker = 1
    return result


def _scatter(result: Result | None, world_size: int, group) -> Result:
    """Rank 0's result, each rank getting its own share of the batch only."""
    shares = None
    if result is not None:
        shares = [
            dataclasses.replace(result, selections=None if result.selections is None else [share])
            for share in (result.selections or [None] * world_size)
        ]
    box = [None]
    torch.distributed.scatter_object_list(box, shares, src=0, group=group)
    return box[0]


def _process_context():
    """Where rollout processes come from: a fork server that has imported this module and what it uses
    (torch, transformers, math-verify: seconds per start otherwise), so a new process is a fork of a
    process that holds no threads and no CUDA context. Spawn where there is no fork server."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    modules = ["lrm_fast.training.rollout_worker", "lrm_fast.training.assembly", "lrm_fast.training.update"]
    context.set_forkserver_preload([__name__, *modules])
    return context
