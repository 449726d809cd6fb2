"""The GRPO training loop: rollout, reward, advantages, update; evaluation and checkpoints around it.

One step (DESIGN.md "Data flow"): B prompts are drawn (each rank takes B / world of them), G responses
sampled per prompt, graded 1/0 against the answer, turned into group-relative advantages, packed into
micro-batches under a token budget and used for clipped-policy-gradient optimizer steps: one by default,
or `trainer.epochs` passes over `trainer.mini_batches` mini-batches (lrm_fast/training/update.py). Each
step's batch is a request with its own seed (lrm_fast/training/async_rollout.py: `sample_request`), sampled
in this process, or ahead of time by the rollout process with trainer.max_staleness > 0, so the two modes
sample the same batches from the same weights.

The study's levers plug in between sampling and the update (lrm_fast/levers/scoring.py): offline sample
injection and the relative length reward before the advantages, the sample regime after them
(lrm_fast/levers/regimes.py). Dynamic sampling (sampling=dynamic, lrm_fast/levers/dynamic_sampling.py)
repeats sampling and scoring in rounds until the batch holds B informative groups. With
trainer.max_staleness > 0 a separate process samples and scores later batches while this one updates
(lrm_fast/training/async_rollout.py).

Simplifications: one optimizer step per rollout batch by default (on-policy, as in the study's baseline
runs; its LUFFY run takes two); the learning-rate schedule counts rollout steps, as verl's does (one
scheduler step per update_policy, fsdp_workers.py:463), whatever the optimizer steps per batch; responses of
zero-variance groups are not forwarded when `regime.drop_zero_variance` (they have A = 0, unless the reward
holds the KL; only their KL and entropy terms are lost, and they still count in the normalisers and the
micro-batch cut).
"""

import json
import time
from contextlib import nullcontext
from copy import deepcopy
from pathlib import Path

import torch

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import TrainConfig, protocol_of
from lrm_fast.config.choices import Injection, MixedPrecision, Regime, RolloutEngine, Sampling
from lrm_fast.config.validation import check_world, round_prompts
from lrm_fast.data.sampler import PromptSampler
from lrm_fast.evaluation.multi_round import evaluate as evaluate_benchmark
from lrm_fast.levers.dynamic_sampling import Selection
from lrm_fast.levers.injection import SolutionBank
from lrm_fast.levers.regimes import RegimeSchedule, apply_regime
from lrm_fast.levers.scoring import ScoredStep
from lrm_fast.model.fsdp import apply_fsdp, gathered_for_generation
from lrm_fast.rollout import NonFiniteError, SamplingParams
from lrm_fast.rollout.sharded import ShardedBackend
from lrm_fast.runtime import DEFAULT_THREADS, DistInfo, all_reduce, threads
from lrm_fast.training import step_metrics
from lrm_fast.training.assembly import (
    RunData,
    build_optimizer,
    build_policy,
    build_rollout,
    encode,
    score,
)
from lrm_fast.training.async_rollout import AsyncRollouts, Request, request_seed, sample_request
from lrm_fast.training.checkpoint import export_model, list_checkpoints, load_checkpoint, save_checkpoint
from lrm_fast.training.guard import Diverged, DivergenceGuard
from lrm_fast.training.metrics import MetricsLogger
from lrm_fast.training.sampler_correction import SamplerCorrection
from lrm_fast.training.tracking import Trackers
from lrm_fast.training.update import policy_updates, response_log_ratios


class GRPOTrainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, dist: DistInfo, data: RunData, trackers: Trackers):
        self.cfg, self.run_dir, self.dist = cfg, Path(run_dir), dist
        check_world(cfg, dist.world_size)
        self.train_examples, self.heldout_examples = data.train, data.heldout
        torch.manual_seed(cfg.seed + dist.rank)  # ranks sample different responses
        self.model, self.tokenizer = build_policy(cfg, dist.device)
        with_reference = cfg.loss.kl_coef > 0 or cfg.reward.kl_coef > 0
        self.ref_model = deepcopy(self.model).eval().requires_grad_(False) if with_reference else None
        self.bf16 = _use_bf16(cfg.trainer.mixed_precision, dist.device)
        if dist.world_size > 1:
            self.model = apply_fsdp(self.model, bf16=self.bf16)
            if self.ref_model is not None:  # sharded too: a full fp32 copy per rank would not fit at 7B
                self.ref_model = apply_fsdp(self.ref_model, bf16=self.bf16)
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg.trainer)
        self.guard = DivergenceGuard(self.model, self.optimizer, self.scheduler, cfg.trainer.max_bad_steps)
        self.heldout_prompts = encode(self.heldout_examples, self.tokenizer, cfg)
        self.sampler = PromptSampler(self.train_examples, cfg.trainer.prompts_per_step, seed=cfg.seed)
        self.backend = build_rollout(cfg, self.model, self.tokenizer)
        self.bank = self._solution_bank(data.solutions_by_id)
        self.regimes = RegimeSchedule(cfg.regime, seed=cfg.seed, rank=dist.rank)
        self.step_count, self.state = 0, {"elapsed_s": 0.0, "generated_tokens": 0}
        self._start = time.perf_counter()
        self.pipeline, in_flight = None, self._resume()
        self.backend.sync_weights(self.model)  # a separate engine starts from the (resumed) policy
        if in_flight is not None and not cfg.trainer.max_staleness:
            raise ValueError(
                f"the checkpoint of step {self.step_count} holds batches sampled ahead by asynchronous "
                f"rollouts ({len(in_flight['requests'])}): resume it with the run's "
                "trainer.max_staleness (> 0)"
            )
        if cfg.trainer.max_staleness:
            self.pipeline = AsyncRollouts(cfg, self.model, self.tokenizer, self.bank, self.ref_model, dist)
            if in_flight is not None:
                self.pipeline.load_state_dict(in_flight)
            # A fresh run, or a checkpoint with no batch in flight (a synchronous one): the next batch to
            # request is the next step's.
            self.pipeline.requested = max(self.pipeline.requested, self.step_count)
        self.logger = MetricsLogger(
            self.run_dir, cfg.trainer.steps, self.step_count, dist.is_main, cfg.trainer.progress_bar, trackers
        )
        if self.pipeline is not None:
            self.logger.write(self.pipeline.describe())

    # ------------------------------------------------------------------------------------ loop
    def train(self) -> dict:
        try:
            return self._train()
        except Diverged:
            self._checkpoint()  # the rolled-back state, resumable
            self.logger.close()
            raise

    def _train(self) -> dict:
        start = time.perf_counter() - self.state["elapsed_s"]
        self._start = start
        if "cold_start_heldout_accuracy" not in self.state:
            self.state["cold_start_heldout_accuracy"] = self.evaluate("cold start")
        while not self._done():
            self.step_count += 1
            self.logger.log(self.step_count, self.step())
            every = self.cfg.eval.every
            if every and self.step_count % every == 0 and not self._done():
                accuracy = self.evaluate(f"step {self.step_count}")
                self.regimes.observe_heldout_accuracy(self.step_count, accuracy)
                self.logger.log(self.step_count, {"eval/accuracy": accuracy})
            if self.step_count % self.cfg.trainer.checkpoint_every == 0 or self._done():
                self._checkpoint()
        export_model(self.model, self.tokenizer, self.run_dir / "final_model")
        final = self.evaluate("final")
        summary = {
            "cold_start_heldout_accuracy": self.state["cold_start_heldout_accuracy"],
            "final_heldout_accuracy": final,
            "improvement_points": round(100 * (final - self.state["cold_start_heldout_accuracy"]), 2),
            "steps": self.step_count,
            "generated_tokens": self.state["generated_tokens"],
            "heldout_problems": len(self.heldout_examples),
            "wall_time_s": round(time.perf_counter() - start, 1),
        }
        if self.dist.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.logger.close()
        return summary

    def _done(self) -> bool:
        """All `trainer.steps` taken, or the step that reached `trainer.token_budget` generated tokens."""
        budget = self.cfg.trainer.token_budget
        spent = budget is not None and self.state["generated_tokens"] >= budget
        return self.step_count >= self.cfg.trainer.steps or spent

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
        if hasattr(self.backend, "close"):
            self.backend.close()

    def evaluate(self, label: str) -> float:
        """Held-out avg@k with the multi-round evaluator; per-problem results go to RUN/eval/LABEL.json.

        Every evaluation starts afresh (a resumed run repeats one killed mid-evaluation) and uses the
        same seed, so the cold-start and final numbers compare like with like. Non-finite logits roll the
        last update back (and rewrite this step's checkpoint) before the evaluation runs again."""
        while True:
            try:
                return self._evaluate_once(label)
            except NonFiniteError:
                self._roll_back(f"sampled logits ({label} evaluation)", sampled_with=self.step_count)
                if self.step_count:
                    self._checkpoint()

    def _evaluate_once(self, label: str) -> float:
        if not self.heldout_prompts:
            return float("nan")
        path = self.run_dir / "eval" / f"{label.replace(' ', '_')}.json"
        if self.dist.is_main:
            path.unlink(missing_ok=True)
        backend = ShardedBackend(self.backend, self.dist.rank, self.dist.world_size)
        with self._generating():
            summary = evaluate_benchmark(
                backend,
                self.tokenizer,
                self.heldout_examples,
                self.heldout_prompts,
                protocol_of(self.cfg.eval),
                seed=self.cfg.seed,
                state_path=path if self.dist.is_main else None,
            )
        self.logger.write(
            f"[eval] {label}: held-out accuracy {100 * summary['score']:.1f}% "
            f"(95% CI {100 * summary['ci_low']:.1f}-{100 * summary['ci_high']:.1f}; "
            f"{summary['problems']} problems x {summary['samples'] // summary['problems']} samples)"
        )
        return summary["score"]

    # ------------------------------------------------------------------------------------ step
    def step(self) -> dict[str, float]:
        cfg = self.cfg
        start = time.perf_counter()
        timings = self._timings = {"time/rollout_s": 0.0, "time/reward_s": 0.0}
        self._async = {}  # the asynchronous pipeline's numbers (staleness, overlap), not phase times
        selection, version = self._select() if self.pipeline is None else self._select_async()
        tick = time.perf_counter()
        if selection is None:  # the weights that sampled it made the logits overflow: undo their update
            lr = self._roll_back("sampled logits", sampled_with=version)
            self._async.update(self.pipeline.push_metrics() if self.pipeline is not None else {})
            return {"optim/skipped": 1.0, "optim/steps": 0.0, "optim/lr": lr, **timings, **self._async}
        self.guard.confirm(version)
        samples = selection.samples
        batch_scale = B.batch_advantage_scale(samples, cfg.loss.advantage_estimator)  # the final batch

        regime = self.regimes.regime(self.step_count)
        apply_regime(samples, regime, cfg.regime, self.regimes.rng(self.step_count))
        update_start = time.monotonic()
        update, lr = self._guarded_update(samples, version)
        timings["time/update_s"], tick = time.perf_counter() - tick, time.perf_counter()
        if self.pipeline is not None:
            self._async["async/overlap_s"] = self.pipeline.overlap(update_start, time.monotonic())
            # The weights gathered and broadcast to the workers since the last row (requests, rollbacks).
            self._async.update(self.pipeline.push_metrics())
        self.backend.sync_weights(self.model)  # hf: the sampler is the policy itself (a no-op)
        timings["time/weight_sync_s"] = time.perf_counter() - tick
        tokens_per_s = sum(len(s.response_ids) for s in samples) / max(sum(timings.values()), 1e-9)
        return {
            **self._sample_metrics(selection),
            "regime/negative_only": float(regime == Regime.negative),
            **batch_scale,
            **step_metrics.update_metrics(update, lr),
            **timings,
            "time/step_s": time.perf_counter() - start,
            **self._async,
            "perf/tokens_per_s": tokens_per_s,
        }

    def _guarded_update(self, samples, version: int):
        """The policy update on a batch sampled with `version`, with the state before it kept until a batch
        sampled from it confirms it (lrm_fast/training/guard.py); a non-finite one is counted.

        What a non-finite update rolls back: non-finite parameters, this update. A non-finite loss or
        gradient norm on weights newer than the batch's (asynchronous rollouts: the batch's own weights
        sampled it finitely), the newest update since, found here rather than lag steps later by the first
        batch those weights sample; on the batch's own weights it points at the batch, and nothing is rolled
        back. One snapshot before the first of the rollout batch's optimizer steps: a rollback undoes all of
        them."""
        self.guard.before_update()
        update, lr = self._update(self._micro_batches(samples))
        # The step that met a non-finite loss or gradient norm was not taken; non-finite parameters were.
        taken = update.steps - (update.nonfinite in ("loss", "gradient norm"))
        self.guard.after_update(self.step_count, taken, proves=update.grad_norm > 0)
        if update.skipped:
            bad_weights = update.nonfinite == "updated parameters"
            newer = self.guard.holds_newer_update(self.step_count, version)
            self._roll_back(update.nonfinite, sampled_with=self.step_count if bad_weights or newer else None)
        return update, lr

    def _roll_back(self, quantity: str, sampled_with: int | None) -> float:
        """Count a bad step (undoing the update inside the weights of version `sampled_with`, when there is
        one to undo) and bring every sampler to the weights kept: the engine, and the batches in flight,
        sampled again. Returns the learning rate."""
        lr = self.scheduler.get_last_lr()[0]
        try:
            line, rolled = self.guard.bad_step(self.step_count, lr, quantity, sampled_with)
        except Diverged:  # rolled back before it stopped: the checkpoint must hold batches of those weights
            self._resample()
            raise
        self.logger.write(line)
        if rolled:
            self._resample()
        return lr

    def _resample(self) -> None:
        """The engine, and the batches in flight (sampled again), on the weights the guard kept."""
        self.backend.sync_weights(self.model)
        if self.pipeline is not None:
            self.pipeline.resubmit(self.model, self.step_count, self.guard.optimizer_steps)

    def _request(self, index: int, version: int) -> Request:
        """Batch `index`, to be sampled with version `version`: its prompts (every round a dynamic step
        may need, reserved now; those it does not use are put back) and its seed."""
        cfg = self.cfg
        rounds = cfg.sampling.max_rounds if cfg.sampling.name == Sampling.dynamic else 1
        prompts = [self.sampler.next_batch(round_prompts(cfg)) for _ in range(rounds)]
        return Request(index, version, prompts, request_seed(cfg.seed, index), self.guard.optimizer_steps)

    def _select(self) -> tuple[Selection | None, int]:
        """The groups this step trains on, sampled here with the current weights (version n - 1): one
        round of B prompts, or dynamic sampling's rounds until B informative groups (each rank its share).
        None when sampling met non-finite logits."""
        n, rank, world = self.step_count, self.dist.rank, self.dist.world_size

        def all_full(full: bool) -> bool:
            short = torch.tensor([0 if full else 1], dtype=torch.int32)
            return all_reduce(short, op=torch.distributed.ReduceOp.MAX).item() == 0

        request = self._request(n, n - 1)
        selection = sample_request(request, self._rollouts, self._score, self.cfg, rank, world, all_full)
        self._put_back_unused(request, selection)
        return selection, n - 1

    def _select_async(self) -> tuple[Selection | None, int]:
        """Batch n from the rollout process, after requesting batch n + lag with the current weights
        (the first step requests batches 1 .. 1 + lag, all with the starting weights)."""
        pipeline, n, cfg = self.pipeline, self.step_count, self.cfg
        while pipeline.requested < n + pipeline.lag:
            pipeline.request(self._request(pipeline.requested + 1, n - 1), self.model)
        tick = time.perf_counter()
        result, request = pipeline.take(n)
        self._put_back_unused(request, result.selection)
        if (result.index, result.version, result.steps) != (n, request.version, request.steps):
            answered = (result.index, result.version, result.steps)
            expected = (n, request.version, request.steps)
            raise RuntimeError(f"batch (index, version, steps) {expected} came back as {answered}")
        staleness = step_metrics.staleness_metrics(
            result, self.guard.optimizer_steps, cfg
        )  # raises past the bound
        self._timings["time/rollout_s"] = time.perf_counter() - tick  # waiting for it
        self._async |= staleness
        self._async["async/sampling_s"] = result.end - result.start
        # Partial rollouts: newer weights sampled some of its tokens (or met the non-finite logits).
        return result.selection, result.version if result.newest is None else result.newest

    def _put_back_unused(self, request: Request, selection: Selection | None) -> None:
        """The rounds of prompts a request reserved and its batch did not sample go back to the sampler."""
        if selection is not None:
            self.sampler.put_back([e for prompts in request.rounds[selection.rounds :] for e in prompts])

    def _rollouts(self, examples, params: SamplingParams):
        """G sampled responses to each of this rank's prompts; None when any rank met non-finite logits
        (every rank then skips the step together)."""
        tick = time.perf_counter()
        prompts = encode(examples, self.tokenizer, self.cfg)
        try:
            with self._generating():
                rollouts = self.backend.generate(prompts, self.cfg.rollout.group_size, params)
        except NonFiniteError:
            rollouts = None
        failed = torch.tensor([rollouts is None], dtype=torch.int32)
        failed = all_reduce(failed, op=torch.distributed.ReduceOp.MAX).item()
        self._timings["time/rollout_s"] += time.perf_counter() - tick
        return None if failed else rollouts

    def _score(self, examples, rollouts) -> ScoredStep:
        tick = time.perf_counter()
        log_ratios = self._log_ratios if self.cfg.reward.kl_coef else None
        scored = score(self.cfg, examples, rollouts, self.tokenizer, self.bank, log_ratios)
        self._timings["time/reward_s"] += time.perf_counter() - tick
        return scored

    def _log_ratios(self, samples) -> list[float]:
        """Each response's summed log-ratio of the policy that sampled it (the current one) to the
        reference, for the KL in the reward."""
        with threads(self._update_threads()):
            return response_log_ratios(
                self.model, self.ref_model, samples, self.cfg.loss, self.cfg.rollout.temperature
            )

    def _micro_batches(self, samples) -> list[list[M.MicroBatch]]:
        """The micro-batches of each mini-batch (one, the whole batch, by default), weighted with that
        mini-batch's global normalisers.

        The normalisers count the regime's kept responses only with `regime.renormalise`; otherwise every
        response counts, so a pruned step is smaller (the study's behaviour). With several mini-batches
        each is normalised on its own, like verl's (dp_actor.py:255, 351-355), so a mini-batch's step has
        the size of a whole batch's. Unlike verl, which cuts only the kept responses into mini-batches of
        the configured size (fewer, full steps when a regime prunes), every rollout batch takes
        `trainer.mini_batches` steps, each shrunk by its own kept share; the two agree when nothing is
        pruned."""
        cfg = self.cfg
        minis = M.mini_batches(samples, cfg.rollout.group_size, cfg.trainer.mini_batches)
        counted = (
            [[s for s in mini if s.regime_weight > 0] for mini in minis] if cfg.regime.renormalise else minis
        )
        normalisers = B.all_reduced([B.local_normalisers(c) for c in counted])
        return [self._collated(mini, n) for mini, n in zip(minis, normalisers, strict=True)]

    def _collated(self, samples, normalisers: B.Normalisers) -> list[M.MicroBatch]:
        """Token weights of one mini-batch, then its micro-batches under the token budget."""
        loss = self.cfg.loss
        sum_norm = loss.sum_norm_length or self.cfg.rollout.max_new_tokens
        groups = M.weighted_micro_batches(
            samples, loss.aggregation, normalisers, sum_norm, loss.micro_batch_tokens, loss.packing
        )
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batches = [M.collate(group, loss.packing, pad_id) for group in groups]
        if self.cfg.rollout.log_mismatch or self._correction().applied:
            for batch, group in zip(batches, groups, strict=True):
                batch.sampler_logprobs = M.sampler_logprobs(group)
        return batches

    def _update(self, mini_batches):
        """The rollout batch's optimizer steps over `mini_batches`; returns their result and the learning
        rate they used (the schedule steps once per rollout batch)."""
        cfg = self.cfg
        self._engine_sleep()
        with self._autocast(), threads(self._update_threads()):
            update = policy_updates(
                self.model,
                self.ref_model if cfg.loss.kl_coef > 0 else None,  # the reward's KL needs none here
                self.optimizer,
                mini_batches,
                cfg.loss,
                cfg.rollout.temperature,
                cfg.trainer.grad_clip,
                epochs=cfg.trainer.epochs,
                shaping_gamma=cfg.injection.gamma if cfg.injection.shaping else None,
                correction=self._correction(),
                clip_policy_tokens=cfg.injection.clip_policy_tokens,
            )
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        return update, lr

    def _update_threads(self) -> int:
        """trainer.update_threads, or every core (less the rollout workers', when this rank started them)."""
        if self.cfg.trainer.update_threads:
            return self.cfg.trainer.update_threads
        if self.pipeline is None:
            return DEFAULT_THREADS
        workers = self.cfg.trainer.rollout_workers if self.dist.is_main else 0  # rank 0 starts them
        return max(1, DEFAULT_THREADS - workers * max(self.cfg.trainer.num_threads, 1))

    def _correction(self) -> SamplerCorrection:
        return SamplerCorrection.of(self.cfg.rollout, asynchronous=self.pipeline is not None)

    def _sample_metrics(self, selection: Selection) -> dict[str, float]:
        """The step's response metrics (step_metrics.sample_counts), summed over ranks; the generated
        tokens' running total is checkpointed."""
        counts = step_metrics.sample_counts(
            selection, self.cfg.sampling.name == Sampling.dynamic, self.cfg.rollout.max_new_tokens
        )
        summed = all_reduce(torch.tensor(list(counts.values()), dtype=torch.float64)).tolist()
        totals = dict(zip(counts, summed, strict=True))
        self.state["generated_tokens"] += int(totals["generated_tokens"])
        return step_metrics.sample_metrics(totals, selection.rounds, self.state["generated_tokens"])

    def _generating(self):
        """Sampling with our own loop on the FSDP policy needs its parameters gathered; a vLLM engine
        holds its own full copy."""
        hf = self.cfg.rollout.backend == RolloutEngine.hf
        return gathered_for_generation(self.model) if hf else nullcontext()

    def _engine_sleep(self) -> None:
        """Let a colocated engine free its GPU memory for the update (rollout.sleep)."""
        if hasattr(self.backend, "sleep"):
            self.backend.sleep()

    def _autocast(self):
        # FSDP2 applies bf16 through its mixed-precision policy; a single GPU process uses autocast.
        enabled = self.bf16 and self.dist.world_size == 1 and self.dist.device.type == "cuda"
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _solution_bank(self, solutions_by_id) -> SolutionBank | None:
        if self.cfg.injection.name != Injection.osi:
            return None
        return SolutionBank(self.tokenizer, self.cfg.rollout.max_new_tokens, solutions_by_id)

    # ------------------------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> None:
        self.state["elapsed_s"] = time.perf_counter() - self._start
        trainer_state = {
            "sampler": self.sampler.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "regimes": self.regimes.state_dict(),
            "optimizer_steps": self.guard.optimizer_steps,
            **self.state,
        }
        if self.pipeline is not None:  # the batches in flight were sampled with weights not saved here
            trainer_state["async"] = self.pipeline.state_dict()
        save_checkpoint(
            self.run_dir,
            self.step_count,
            self.model,
            self.optimizer,
            trainer_state,
            keep=self.cfg.trainer.keep_checkpoints,
        )

    def _resume(self) -> dict | None:
        """Load the last checkpoint, if any; returns its asynchronous rollouts in flight (or None)."""
        checkpoints = list_checkpoints(self.run_dir)
        if not checkpoints:
            return None
        state = load_checkpoint(checkpoints[-1], self.model, self.optimizer)
        self.sampler.load_state_dict(state.pop("sampler"))
        self.scheduler.load_state_dict(state.pop("scheduler"))
        self.regimes.load_state_dict(state.pop("regimes"))
        self.step_count = state.pop("step")
        self.guard.optimizer_steps = state.pop("optimizer_steps", 0)
        in_flight = state.pop("async", None)
        self.state = state
        return in_flight


def _use_bf16(mixed_precision: MixedPrecision, device: torch.device) -> bool:
    auto_cuda = mixed_precision == MixedPrecision.auto and device.type == "cuda"
    return mixed_precision == MixedPrecision.bf16 or auto_cuda
