"""The GRPO training loop: rollout, reward, advantages, update; evaluation and checkpoints around it.

One step (DESIGN.md "Data flow"): B prompts are drawn (each rank takes B / world of them), G responses
sampled per prompt, graded 1/0 against the answer, turned into group-relative advantages, packed into
micro-batches under a token budget and used for clipped-policy-gradient optimizer steps: one by default,
or `trainer.epochs` passes over `trainer.mini_batches` mini-batches (lrm_fast/training/update.py).

The study's levers plug in between sampling and the update (lrm_fast/levers/scoring.py): offline sample
injection and the relative length reward before the advantages, the sample regime after them
(lrm_fast/levers/regimes.py). Dynamic sampling (sampling=dynamic, lrm_fast/levers/dynamic_sampling.py)
repeats sampling and scoring in rounds until the batch holds B informative groups. With
trainer.max_staleness > 0 a separate process samples and scores later batches while this one updates
(lrm_fast/training/async_rollout.py).

Simplifications: one optimizer step per rollout batch by default (on-policy, as in the study's baseline
runs; its LUFFY run takes two); the learning-rate schedule counts rollout steps, as verl's does (one
scheduler step per update_policy, fsdp_workers.py:463), whatever the optimizer steps per batch; responses of
zero-variance groups are not forwarded when `regime.drop_zero_variance` (they have A = 0; only their KL
and entropy terms are lost, and their tokens still count in the normalisers).
"""

import json
import math
import time
from contextlib import nullcontext
from copy import deepcopy
from pathlib import Path

import torch

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import TrainConfig, protocol_of
from lrm_fast.config.choices import Injection, MixedPrecision, Regime, RolloutEngine, Sampling
from lrm_fast.config.validation import round_prompts
from lrm_fast.data.sampler import PromptSampler
from lrm_fast.evaluation.multi_round import evaluate as evaluate_benchmark
from lrm_fast.levers.dynamic_sampling import Selection, select_groups, static_selection
from lrm_fast.levers.injection import SolutionBank
from lrm_fast.levers.regimes import RegimeSchedule, apply_regime
from lrm_fast.levers.scoring import ScoredStep, lever_metrics
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
from lrm_fast.training.async_rollout import AsyncRollouts, Request, request_seed
from lrm_fast.training.checkpoint import export_model, list_checkpoints, load_checkpoint, save_checkpoint
from lrm_fast.training.guard import Diverged, DivergenceGuard
from lrm_fast.training.metrics import MetricsLogger
from lrm_fast.training.update import policy_updates


class GRPOTrainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, dist: DistInfo, data: RunData):
        self.cfg, self.run_dir, self.dist = cfg, Path(run_dir), dist
        self.train_examples, self.heldout_examples = data.train, data.heldout
        torch.manual_seed(cfg.seed + dist.rank)  # ranks sample different responses
        self.model, self.tokenizer = build_policy(cfg, dist.device)
        self.ref_model = deepcopy(self.model).eval().requires_grad_(False) if cfg.loss.kl_coef > 0 else None
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
        if cfg.trainer.max_staleness:
            if dist.world_size > 1:
                raise ValueError("trainer.max_staleness > 0 runs in one process (no torchrun) for now")
            self.pipeline = AsyncRollouts(cfg, self.model, self.tokenizer, self.bank)
            if in_flight is not None:
                self.pipeline.load_state_dict(in_flight)
        self.logger = MetricsLogger(
            self.run_dir, cfg.trainer.steps, self.step_count, dist.is_main, cfg.trainer.progress_bar
        )
        if self.pipeline is not None:
            self.logger.write(
                f"[async] rollout process {self.pipeline.process.pid}: batches sampled up to "
                f"{cfg.trainer.max_staleness} policy versions ahead of the update"
            )

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
                lr = self.scheduler.get_last_lr()[0]
                quantity = f"sampled logits ({label} evaluation)"
                self.logger.write(self.guard.bad_step(self.step_count, lr, quantity, roll_back=True))
                self.backend.sync_weights(self.model)
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
        selection = self._select() if self.pipeline is None else self._select_async()
        tick = time.perf_counter()
        if selection is None:  # the last update made the policy's logits overflow: undo it
            lr = self.scheduler.get_last_lr()[0]
            self.logger.write(self.guard.bad_step(self.step_count, lr, "sampled logits", roll_back=True))
            self.backend.sync_weights(self.model)
            if self.pipeline is not None:  # batches sampled with the undone weights are sampled again
                self.pipeline.resubmit(self.model, version=self.step_count - 1)
            return {"optim/skipped": 1.0, "optim/steps": 0.0, "optim/lr": lr, **timings, **self._async}
        self.guard.rollout_ok()
        samples = selection.samples

        regime = self.regimes.regime(self.step_count)
        apply_regime(samples, regime, cfg.regime, self.regimes.rng(self.step_count))
        update_start = time.monotonic()
        update, lr = self._guarded_update(samples)
        timings["time/update_s"], tick = time.perf_counter() - tick, time.perf_counter()
        if self.pipeline is not None:
            self._async["async/overlap_s"] = self.pipeline.overlap(update_start, time.monotonic())
        self.backend.sync_weights(self.model)  # hf: the sampler is the policy itself (a no-op)
        timings["time/weight_sync_s"] = time.perf_counter() - tick
        tokens_per_s = sum(len(s.response_ids) for s in samples) / max(sum(timings.values()), 1e-9)
        return {
            **self._sample_metrics(selection),
            "regime/negative_only": float(regime == Regime.negative),
            **step_metrics.update_metrics(update, lr),
            **timings,
            "time/step_s": time.perf_counter() - start,
            **self._async,
            "perf/tokens_per_s": tokens_per_s,
        }

    def _guarded_update(self, samples):
        """The policy update with the state before it kept for a rollback; a non-finite one is counted.

        One snapshot before the first of the rollout batch's optimizer steps: a rollback undoes all of
        them (every step of the update ran on data the rolled-back policy sampled)."""
        self.guard.snapshot()
        update, lr = self._update(self._micro_batches(samples))
        if update.skipped:
            rolled = update.nonfinite == "updated parameters"
            self.logger.write(self.guard.bad_step(self.step_count, lr, update.nonfinite, roll_back=rolled))
        elif update.grad_norm > 0:  # an update without gradient (all groups zero-variance) proves nothing
            self.guard.applied()
        return update, lr

    def _select(self) -> Selection | None:
        """The groups this step trains on: one round of B prompts, or dynamic sampling's rounds until B
        informative groups (each rank its share). None when sampling met non-finite logits."""
        cfg, rank, world = self.cfg, self.dist.rank, self.dist.world_size
        group_size = cfg.rollout.group_size
        if cfg.sampling.name == Sampling.static:
            scored = self._draw(cfg.trainer.prompts_per_step)
            return None if scored is None else static_selection(scored, group_size)
        quota = len(range(rank, cfg.trainer.prompts_per_step, world))

        def all_full(full: bool) -> bool:
            short = torch.tensor([0 if full else 1], dtype=torch.int32)
            return all_reduce(short, op=torch.distributed.ReduceOp.MAX).item() == 0

        def draw() -> ScoredStep | None:
            return self._draw(round_prompts(cfg))

        return select_groups(draw, quota, group_size, cfg.sampling, all_full)

    def _select_async(self) -> Selection | None:
        """Batch n from the rollout process, after requesting batch n + lag with the current weights
        W_{n-1} (the first step requests batches 1 .. 1 + lag, all with W_0)."""
        pipeline, n, cfg = self.pipeline, self.step_count, self.cfg
        rounds = cfg.sampling.max_rounds if cfg.sampling.name == Sampling.dynamic else 1
        while pipeline.requested < n + pipeline.lag:
            index = pipeline.requested + 1
            prompts = [self.sampler.next_batch(round_prompts(cfg)) for _ in range(rounds)]
            pipeline.request(Request(index, n - 1, prompts, request_seed(cfg.seed, index)), self.model)
        tick = time.perf_counter()
        result = pipeline.take(n)
        staleness = (n - 1 - result.version) * cfg.trainer.mini_batches
        if staleness > cfg.trainer.max_staleness:  # the schedule guarantees it; a broken one must not train
            raise RuntimeError(
                f"batch {n} is {staleness} policy versions old (max {cfg.trainer.max_staleness})"
            )
        self._timings["time/rollout_s"] = time.perf_counter() - tick  # waiting for it
        self._async["async/staleness"] = float(staleness)
        self._async["async/sampling_s"] = result.end - result.start
        return result.selection

    def _draw(self, num_prompts: int) -> ScoredStep | None:
        """One sampling round: `num_prompts` prompts (this rank's share of them) sampled and scored."""
        cfg, tick = self.cfg, time.perf_counter()
        examples = self.sampler.next_batch(num_prompts)[self.dist.rank :: self.dist.world_size]
        rollouts = self._rollouts(examples)
        self._timings["time/rollout_s"] += time.perf_counter() - tick
        if rollouts is None:
            return None
        tick = time.perf_counter()
        scored = score(cfg, examples, rollouts, self.tokenizer, self.bank)
        self._timings["time/reward_s"] += time.perf_counter() - tick
        return scored

    def _rollouts(self, examples):
        """G sampled responses to each of this rank's prompts; None when any rank met non-finite logits
        (every rank then skips the step together)."""
        prompts = encode(examples, self.tokenizer, self.cfg)
        rollout = self.cfg.rollout
        params = SamplingParams(rollout.max_new_tokens, rollout.temperature, rollout.top_p)
        try:
            with self._generating():
                rollouts = self.backend.generate(prompts, group_size=rollout.group_size, params=params)
        except NonFiniteError:
            rollouts = None
        failed = torch.tensor([rollouts is None], dtype=torch.int32)
        return None if all_reduce(failed, op=torch.distributed.ReduceOp.MAX).item() else rollouts

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
        cfg = self.cfg
        sum_norm = cfg.loss.sum_norm_length or cfg.rollout.max_new_tokens
        B.assign_weights(samples, cfg.loss.aggregation, normalisers, sum_norm)
        packed = cfg.loss.packing  # one row per micro-batch, no padding
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        groups = M.micro_batches(samples, cfg.loss.micro_batch_tokens, packed)
        B.weight_micro_batches(groups, cfg.loss.aggregation, sum_norm)
        batches = [M.collate(group, packed, pad_id) for group in groups]
        if cfg.rollout.log_mismatch or cfg.rollout.tis_cap is not None or self.pipeline is not None:
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
                self.ref_model,
                self.optimizer,
                mini_batches,
                cfg.loss,
                cfg.rollout.temperature,
                cfg.trainer.grad_clip,
                epochs=cfg.trainer.epochs,
                shaping_gamma=cfg.injection.gamma if cfg.injection.shaping else None,
                tis_cap=self._tis_cap(),
                clip_policy_tokens=cfg.injection.clip_policy_tokens,
            )
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        return update, lr

    def _update_threads(self) -> int:
        """trainer.update_threads, or every core (less the rollout process's, when there is one)."""
        if self.cfg.trainer.update_threads:
            return self.cfg.trainer.update_threads
        if self.pipeline is None:
            return DEFAULT_THREADS
        return max(1, DEFAULT_THREADS - max(self.cfg.trainer.num_threads, 1))

    def _tis_cap(self) -> float | None:
        """rollout.tis_cap; asynchronous rollouts always weight stale tokens by pi_prox / mu (decoupled
        PPO), so there null means no cap rather than no weight."""
        if self.cfg.rollout.tis_cap is None and self.pipeline is not None:
            return math.inf
        return self.cfg.rollout.tis_cap

    def _sample_metrics(self, selection: Selection) -> dict[str, float]:
        """Rewards, accuracy, zero-advantage shares (before / after the levers), lengths and lever counts,
        summed over ranks, of every response sampled in the step (all rounds of dynamic sampling); the
        forwarded and kept counts are the trained groups'. Accuracy and lengths are the policy's own
        responses (injected ones excluded: injection only ever replaces incorrect responses). Generated
        tokens count every sampled response, and their running total is checkpointed."""
        scored, trained = selection.sampled, selection.samples
        samples = scored.samples
        sampled = [s for s in samples if not s.injected]
        correct_lengths = [len(s.response_ids) for s in sampled if s.correct]
        wrong_lengths = [len(s.response_ids) for s in sampled if not s.correct]
        before, after = scored.before, scored.after
        values = {
            "responses": len(samples),
            "reward": sum(s.reward for s in samples),
            "correct": sum(s.correct for s in sampled),
            "groups": after.groups,
            "all_correct": after.all_correct,
            "all_wrong": after.all_wrong,
            "all_correct_before": before.all_correct,
            "all_wrong_before": before.all_wrong,
            "n_correct": len(correct_lengths),
            "len_correct": sum(correct_lengths),
            "n_wrong": len(wrong_lengths),
            "len_wrong": sum(wrong_lengths),
            "forwarded": sum(s.forward for s in trained),
            "kept": sum(s.regime_weight > 0 for s in trained),
            "injected": scored.injected,
            "shaped_groups": scored.shaped_groups,
            "generated_tokens": selection.generated_tokens,
            **scored.counts,
            **(
                step_metrics.selection_counts(selection) if self.cfg.sampling.name == Sampling.dynamic else {}
            ),
        }
        summed = all_reduce(torch.tensor(list(values.values()), dtype=torch.float64)).tolist()
        totals = dict(zip(values, summed, strict=True))
        self.state["generated_tokens"] += int(totals["generated_tokens"])
        tokens = {
            "rollout/generated_tokens": totals["generated_tokens"],
            "rollout/generated_tokens_total": float(self.state["generated_tokens"]),
        }
        sampling = step_metrics.sampling_metrics(totals, selection.rounds) if "kept_groups" in totals else {}
        return {**step_metrics.shares(totals), **lever_metrics(totals), **tokens, **sampling}

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
        in_flight = state.pop("async", None)
        self.state = state
        return in_flight


def _use_bf16(mixed_precision: MixedPrecision, device: torch.device) -> bool:
    auto_cuda = mixed_precision == MixedPrecision.auto and device.type == "cuda"
    return mixed_precision == MixedPrecision.bf16 or auto_cuda
