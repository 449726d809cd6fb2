"""GRPO steps of a randomly initialised Qwen2.5-0.5B-shaped model: the trainer's parts at a real size.

No download: the model is built from its shape (hidden 896, 24 layers, 14 query / 2 key-value heads,
MLP 4864, vocabulary 151936, tied embeddings). Each step samples G responses per prompt with the hf
rollout backend, gives them random 0/1 rewards (a random model solves nothing, so the grader would give
zero-variance groups only), and runs the real update: group advantages, global weights, packed micro-batches
with the chosen varlen attention, the fused GRPO loss, AdamW. Reported per attention path: rollout and update
tokens/s and peak memory. flash-attn is not needed (auto picks torch's varlen attention on CUDA without it).

    python -m benchmarks.gpu_smoke                                  # on a GPU (gpu_check.sh runs it)
    python -m benchmarks.gpu_smoke --shape tiny --device cpu --steps 1   # the same code on CPU (a test)
"""

import argparse
import json
import random
import time
from types import SimpleNamespace

import torch

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import LossConfig, TinyModelConfig
from lrm_fast.model import attention as P
from lrm_fast.model.causal_lm import build_model, enable_activation_checkpointing, tiny_qwen2_config
from lrm_fast.rollout import SamplingParams
from lrm_fast.rollout.hf import HFRolloutBackend
from lrm_fast.training.update import policy_update

SHAPES = {
    # Qwen2.5-0.5B: head_dim 64, grouped-query attention 14 / 2.
    "qwen2.5-0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        intermediate_size=4864,
    ),
    "tiny": dict(
        vocab_size=512, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256
    ),
}


def random_policy(shape: str, device: torch.device):
    settings = dict(SHAPES[shape])
    vocab_size, num_kv_heads = settings.pop("vocab_size"), settings.pop("num_kv_heads")
    dims = TinyModelConfig(max_position_embeddings=4096, **settings)
    config = tiny_qwen2_config(vocab_size, dims, num_kv_heads=num_kv_heads)
    config.eos_token_id = 2
    return build_model(config, seed=0).to(device), config


def grpo_step(model, backend, optimizer, prompts, args, loss_cfg, rng) -> dict:
    """One rollout + update; returns its token counts and times."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    tick = time.perf_counter()
    params = SamplingParams(max_new_tokens=args.response_tokens, temperature=1.0)
    rollouts = backend.generate(prompts, group_size=args.group_size, params=params)
    sync()
    rollout_s, tick = time.perf_counter() - tick, time.perf_counter()
    samples = [B.Sample(r.prompt_ids, r.response_ids, float(rng.random() < 0.5), False) for r in rollouts]
    B.assign_advantages(samples, args.group_size, "std")
    B.assign_weights(samples, "token_mean", B.local_normalisers(samples), args.response_tokens)
    batches = [M.collate(mb, True) for mb in M.micro_batches(samples, args.micro_batch_tokens, True)]
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=model.device.type == "cuda"):
        update = policy_update(model, None, optimizer, batches, loss_cfg, 1.0, grad_clip=1.0)
    sync()
    response_tokens = sum(len(r.response_ids) for r in rollouts)
    return {
        "rollout_tokens_per_s": response_tokens / rollout_s,
        "update_tokens_per_s": sum(s.num_tokens for s in samples) / (time.perf_counter() - tick),
        "micro_batches": len(batches),
        "loss_finite": bool(torch.isfinite(torch.tensor(update.loss))),
    }


def run(args, attention: str) -> dict:
    device = torch.device(args.device)
    model, config = random_policy(args.shape, device)
    if args.activation_checkpointing:
        enable_activation_checkpointing(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
    backend = HFRolloutBackend(
        model,
        SimpleNamespace(pad_token_id=0, eos_token_id=2),
        eos_token_ids=[config.eos_token_id],
        max_batch_size=None,
    )
    loss_cfg = LossConfig(
        backend=args.loss_backend,
        packing=True,
        packed_attention=attention,
        micro_batch_tokens=args.micro_batch_tokens,
    )
    rng = random.Random(0)
    prompts = [
        [rng.randrange(3, config.vocab_size) for _ in range(args.prompt_tokens)] for _ in range(args.prompts)
    ]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps = [grpo_step(model, backend, optimizer, prompts, args, loss_cfg, rng) for _ in range(args.steps)]
    last = steps[-1]  # the first step pays for kernel compilation and allocator warm-up
    return {
        "attention": P.resolve_attention(attention, device),
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        **{k: round(v, 1) if isinstance(v, float) else v for k, v in last.items()},
        "peak_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attention", nargs="+", default=["auto", "sdpa"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--response-tokens", type=int, default=256)
    parser.add_argument("--micro-batch-tokens", type=int, default=16384)
    parser.add_argument("--loss-backend", default="auto")
    parser.add_argument("--activation-checkpointing", action="store_true")
    args = parser.parse_args(argv)
    results = []
    for attention in args.attention:
        try:
            result = run(args, attention)
        except Exception as error:  # report the path that failed and go on with the others
            result = {"attention": attention, "error": f"{type(error).__name__}: {error}"[:300]}
        print(json.dumps(result), flush=True)
        results.append(result)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results


if __name__ == "__main__":
    main()
