"""One GRPO update at length: step time and peak memory against response length and tokens per step.

The model is the long task's tiny shape (conf/model/tiny_long.yaml: hidden 128, 3 layers, MLP 512) with a
32k-vocabulary head, as bench_fused_head.py uses: with the task's own 70-token vocabulary the [N, V] logits
would weigh nothing, and at long context they are what a real model's update runs out of memory on. Each
point is one `policy_update` (the trainer's: forward, clipped GRPO loss, backward, AdamW) of responses
whose lengths spread from L/4 to the limit L (`response_lengths`), after 32-token prompts, in one
micro-batch, so that its memory is that of all its tokens (the trainer's `loss.micro_batch_tokens` caps it).

Two sweeps, each over 8 paths (padded or packed, fused head or logits, activation checkpointing on or off):

    length   L = 128 ... 4096 at a fixed number of tokens per step, prompts and responses (--tokens)
    tokens   response tokens per step doubled at a fixed L (--length), the prompts growing with them

Per point: one update for the peak memory (benchmarks/memory.py: RSS growth on CPU, the allocator's peak on
CUDA, both above the memory in use before it: weights, AdamW state and inputs excluded; CUDA rows also give
the whole peak), then --repeats timed updates (median; 0: the peak's own update, the first at its shape,
times the point); one more update per path, before its first point, allocates AdamW's moments. `--plot`
draws both sweeps.

    python -m benchmarks.update_at_length --out docs/perf/update_at_length.json --plot
    python -m benchmarks.update_at_length --device cuda --shape qwen2.5-1.5b --sweep length \\
        --lengths 8192 16384 --tokens 32768 --paths packed-fused-ckpt --repeats 1   # gpu_check.sh's
"""

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.memory import peak_memory_bytes
from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import LossConfig, TinyModelConfig
from lrm_fast.model.causal_lm import build_model, enable_activation_checkpointing, tiny_qwen2_config
from lrm_fast.training.update import policy_update

PROMPT_TOKENS = 32
SHAPES = {
    # conf/model/tiny_long.yaml's dimensions; the head is 32k wide instead of the task's 70 tokens.
    "tiny-long-v32k": dict(
        vocab_size=32000, hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=4, intermediate_size=512
    ),
    # DeepSeek-R1-Distill-Qwen-1.5B's shape (the study's model), randomly initialised: a GPU's check.
    "qwen2.5-1.5b": dict(
        tied=False,
        vocab_size=151936,
        hidden_size=1536,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        intermediate_size=8960,
    ),
}
PATHS = [
    f"{layout}-{head}-{ckpt}"
    for layout, head, ckpt in itertools.product(("padded", "packed"), ("fused", "logits"), ("ckpt", "full"))
]


def response_lengths(tokens: int, length: int, prompt_tokens: int = 0) -> list[int]:
    """Response lengths whose tokens, with `prompt_tokens` more for each response, sum to `tokens` (short of
    it by at most one prompt), the longest exactly `length`: L, L/4, 3L/4, L/2 over and over (a spread
    like a long-task batch's), the last one cut to fit."""
    if tokens < length + prompt_tokens:
        raise ValueError(f"tokens per step ({tokens}) must hold one response at the limit ({length})")
    cycle = [length, max(1, length // 4), max(1, 3 * length // 4), max(1, length // 2)]
    lengths, total = [], 0
    while tokens - total > prompt_tokens:
        lengths.append(min(cycle[len(lengths) % 4], tokens - total - prompt_tokens))
        total += prompt_tokens + lengths[-1]
    return lengths


def make_batch(lengths: list[int], vocab_size: int, packed: bool, seed: int = 0) -> M.MicroBatch:
    """One micro-batch of random responses with alternating rewards: one group, advantages +-1."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i, n in enumerate(lengths):
        prompt, response = torch.randint(3, vocab_size, (PROMPT_TOKENS + n,), generator=g).split(
            [PROMPT_TOKENS, n]
        )
        samples.append(B.Sample(prompt.tolist(), response.tolist(), float(i % 2), bool(i % 2)))
    B.assign_advantages(samples, len(samples), "std")
    B.assign_weights(samples, "token_mean", B.local_normalisers(samples), max(lengths))
    return M.collate(samples, packed)


def build_policy(shape: str, device: torch.device, checkpointing: bool, max_positions: int):
    settings = dict(SHAPES[shape])
    vocab_size, num_kv_heads = settings.pop("vocab_size"), settings.pop("num_kv_heads")
    tied = settings.pop("tied", True)
    dims = TinyModelConfig(max_position_embeddings=max_positions, **settings)
    config = tiny_qwen2_config(vocab_size, dims, num_kv_heads=num_kv_heads)
    config.tie_word_embeddings = tied  # the 1.5B model's head is its own matrix (docs/SCALE.md)
    model = build_model(config, seed=0).to(device)
    if checkpointing:  # as lrm_fast/training/assembly.py turns on model.activation_checkpointing
        enable_activation_checkpointing(model)
    return model


def measure_point(model, optimizer, batch, fused: bool, repeats: int, warm_up: bool) -> dict:
    """The peak memory of one update, then the median seconds of `repeats` more (the peak's call, the
    first at this shape, is the warm-up of the timed ones)."""
    device = next(model.parameters()).device
    loss_cfg = LossConfig(fused_head=fused, packing=batch.packed, micro_batch_tokens=1 << 30)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def update():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return policy_update(model, None, optimizer, [batch], loss_cfg, 1.0, grad_clip=1.0)

    if warm_up:  # AdamW's moments exist before the first peak, as they do before every later one
        update()
    tick = time.perf_counter()
    peak = peak_memory_bytes(update, device)
    peak_call_s = time.perf_counter() - tick  # with the peak's gc and heap trim: --repeats 0 only
    row = {"peak_bytes": peak}
    if device.type == "cuda":  # the whole update: weights, gradients and AdamW state included
        row["peak_total_bytes"] = torch.cuda.max_memory_allocated(device)
    times = []
    for _ in range(repeats):
        sync()
        tick = time.perf_counter()
        update()
        sync()
        times.append(time.perf_counter() - tick)
    return {"seconds": statistics.median(times) if times else peak_call_s, "timed_calls": len(times), **row}


def run_path(args, path: str, points: list[tuple[str, int, int]]) -> list[dict]:
    """Every point of the sweeps on one path (one model, so checkpointing is set once)."""
    layout, head, ckpt = path.split("-")
    device = torch.device(args.device)
    max_positions = PROMPT_TOKENS + max(length for _, length, _ in points)
    model = build_policy(args.shape, device, ckpt == "ckpt", max_positions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
    rows = []
    for i, (sweep, length, tokens) in enumerate(points):
        # The length sweep fixes the tokens of a step (prompts and responses, what loss.micro_batch_tokens
        # counts); the tokens sweep doubles the response tokens, the prompts growing with them.
        lengths = response_lengths(tokens, length, PROMPT_TOKENS if sweep == "length" else 0)
        batch = make_batch(lengths, model.config.vocab_size, layout == "packed")
        row = {
            "shape": args.shape,
            "vocab_size": model.config.vocab_size,
            "sweep": sweep,
            "path": path,
            "length": length,
            "tokens": sum(lengths),
            "step_tokens": sum(lengths) + PROMPT_TOKENS * len(lengths),  # with the prompts, no padding
            "responses": len(lengths),
            "forward_tokens": batch.input_ids.numel(),
        }
        try:
            row |= measure_point(model, optimizer, batch, head == "fused", args.repeats, warm_up=i == 0)
        except torch.OutOfMemoryError as error:
            row["error"] = f"out of memory: {error}"[:200]
            torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def sweep_points(args) -> list[tuple[str, int, int]]:
    points = []
    if args.sweep in ("length", "both"):
        points += [("length", length, args.tokens) for length in args.lengths]
    if args.sweep in ("tokens", "both"):
        points += [("tokens", args.length, tokens) for tokens in args.token_counts]
    return points


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny-long-v32k")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sweep", choices=("length", "tokens", "both"), default="both")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096])
    parser.add_argument("--tokens", type=int, default=8192, help="real tokens per step of the length sweep")
    parser.add_argument("--length", type=int, default=512, help="response limit of the tokens sweep")
    parser.add_argument("--token-counts", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=PATHS)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the rows here as JSON")
    parser.add_argument("--plot", action="store_true", help="draw the sweeps beside --out (.png)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    points = sweep_points(args)
    rows = [row for path in args.paths for row in run_path(args, path, points)]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
        if args.plot:
            from benchmarks.update_at_length_report import plot

            plot(rows, args.out.with_suffix(".png"))
    return rows


if __name__ == "__main__":
    main()
