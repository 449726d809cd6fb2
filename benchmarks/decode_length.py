"""The hf rollout backend's decode loop on the long task: how close it runs to its own forward passes.

Two measurements, each reported as a ratio (benchmarks never assert on time):

- Loop against its bound. ``HFRolloutBackend.generate`` samples G responses per prompt from the long
  task's model (by default its SFT cold start, found or trained as ``lrm-fast-train data=long_arithmetic
  model=tiny_long`` finds it, to prompts of its training pool encoded as the trainer encodes them); that
  call is T_loop. The bound replays the same batch with the sampled tokens forced: one prefill, then one
  decode forward per step over exactly the rows still active then (rows leave at their sampled lengths,
  their cache rows dropped the same way), each through the loop's own ``_forward``. Only those calls
  are timed; their sum is the bound, so bound / T_loop is the share of the loop spent in the model (the
  rest: drawing, bookkeeping, dropping rows). The replay also recomputes each sampled token's log-prob at
  the sampling temperature, which must equal the loop's (the same computation).
- One long row among short ones. ``_decode`` with a ``draw`` that forces the lengths: one row runs to the
  limit, K short ones end at lengths spread up to a limit / 8. T_mixed / (T_long + T_short), the batch
  against its rows decoded apart, stays near or under 1 when finished rows really leave the batch. Beside
  it, T_no_drop / (T_long + T_short) with all K + 1 rows run to the limit: the ratio the mixed batch would
  show if they stayed. The first ratio tells only where the second is well above 1 (where a step's cost
  grows with its rows: on CPU, not for a tiny model on a GPU, whose steps are launch-bound).

Every time is the median of --repeats runs after one warm-up run; the runs compared take turns, so that a
shared machine's changing load falls on all of them alike. One batch of rows (no generation_batch_size
chunks), fp32, the trainer's attention implementation, trainer.num_threads threads (--threads).

    LRM_FAST_CACHE=/tmp/lt/cache python -m benchmarks.decode_length     # the cold start, on CPU or GPU
    python -m benchmarks.decode_length --model DIR --device cuda       # any saved model + tokenizer
"""

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from transformers import DynamicCache

from lrm_fast.cli.configs import register_configs
from lrm_fast.config import TrainConfig
from lrm_fast.data.sources import load_examples
from lrm_fast.data.tokenizer import load_tokenizer
from lrm_fast.model.causal_lm import load_model
from lrm_fast.rollout import Rollout, SamplingParams
from lrm_fast.rollout.hf import HFRolloutBackend, left_pad
from lrm_fast.runtime import threads
from lrm_fast.training.assembly import encode, policy_path

LONG_TASK = ["data=long_arithmetic", "model=tiny_long"]


def compose_config(overrides: list[str]) -> TrainConfig:
    """The trainer's typed config for these command-line overrides (conf/config.yaml)."""
    register_configs()
    with initialize_config_module(config_module="lrm_fast.conf", version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=overrides))


def load_policy(cfg: TrainConfig, path: str | None, device: torch.device):
    """(model, tokenizer, path): the saved model at `path`, else the run's own (the tiny model's cold
    start, trained and cached on first use)."""
    path = path or policy_path(cfg)
    model = load_model(path, dtype=torch.float32, attn_implementation=cfg.model.attn_implementation.value)
    return model.to(device), load_tokenizer(path), path


def task_prompts(cfg: TrainConfig, tokenizer, count: int) -> list[list[int]]:
    """The first `count` prompts of the run's training pool, as the trainer encodes them."""
    train, _ = load_examples(replace(cfg.data, train_problems=count), 0)
    return encode(train, tokenizer, cfg)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work (CUDA runs asynchronously); nothing to wait for on CPU."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def wall_seconds(run: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """The wall time of one call of `run`, the device's queued work included, and its result."""
    sync = synchronizer(device)
    sync()
    start = time.perf_counter()
    result = run()
    sync()
    return time.perf_counter() - start, result


@dataclass
class Replay:
    forward_s: float  # the model calls alone: prefill and every decode step
    active_rows: list[int]  # rows of each decode forward
    max_logprob_error: float  # |replayed - sampled| log-prob of the forced tokens, at most


def timed_forward(backend: HFRolloutBackend, input_ids, attention_mask, position_ids, cache, sync):
    """``HFRolloutBackend._forward`` (the loop's own model call and its finiteness check), timed alone;
    its last logits."""
    sync()
    start = time.perf_counter()
    logits = backend._forward(input_ids, attention_mask, position_ids, cache)
    sync()
    return time.perf_counter() - start, logits


def padded(rows: list[list], value, device: torch.device) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], device=device)


@torch.inference_mode()
def replay(backend: HFRolloutBackend, rollouts: list[Rollout], temperature: float) -> Replay:
    """The loop's forward passes over `rollouts` again, each sampled token forced (see the docstring)."""
    device = next(backend.model.parameters()).device
    sync = synchronizer(device)
    tokens = padded([r.response_ids for r in rollouts], backend.pad_token_id, device)
    sampled = padded([r.logprobs for r in rollouts], 0.0, device)
    lengths = torch.tensor([len(r.response_ids) for r in rollouts], device=device)
    input_ids, attention_mask = left_pad([r.prompt_ids for r in rollouts], backend.pad_token_id, device)
    positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    active, cache = torch.arange(len(rollouts), device=device), DynamicCache()
    seconds, logits = timed_forward(backend, input_ids, attention_mask, positions, cache, sync)
    next_position, active_rows, errors = positions[:, -1:] + 1, [], []
    for t in range(tokens.shape[1]):
        token = tokens[active, t]
        logp = torch.log_softmax(logits / temperature, dim=-1).gather(1, token[:, None]).squeeze(1)
        errors.append((logp - sampled[active, t]).abs().max())
        keep = (lengths[active] > t + 1).nonzero().squeeze(1)  # a row of length t + 1 ended at step t
        if keep.numel() == 0:
            break
        if keep.numel() < len(active):
            cache.batch_select_indices(keep)
            active, token = active[keep], token[keep]
            attention_mask, next_position = attention_mask[keep], next_position[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
        active_rows.append(len(active))
        step_s, logits = timed_forward(backend, token[:, None], attention_mask, next_position, cache, sync)
        seconds, next_position = seconds + step_s, next_position + 1
    return Replay(seconds, active_rows, torch.stack(errors).max().item())


def loop_against_bound(backend: HFRolloutBackend, prompts: list[list[int]], args) -> dict:
    """T_loop of ``generate`` and the bound of its replay (the first measurement of the docstring)."""
    device = next(backend.model.parameters()).device
    params = SamplingParams(args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    sample = lambda: backend.generate(prompts, args.group_size, params)
    rollouts = sample()  # the warm-up; seeded, so every timed call samples these same responses
    was_training = backend.model.training
    backend.model.eval()  # as in _decode: no dropout
    last, loop_times, bound_times = replay(backend, rollouts, args.temperature), [], []
    # Loop and replay take turns, so that a shared machine's changing load falls on both alike.
    for _ in range(args.repeats):
        loop_times.append(wall_seconds(sample, device)[0])
        last = replay(backend, rollouts, args.temperature)
        bound_times.append(last.forward_s)
    backend.model.train(was_training)
    loop_s, bound_s = statistics.median(loop_times), statistics.median(bound_times)
    lengths = [len(r.response_ids) for r in rollouts]
    return {
        "rows": len(rollouts),
        "loop_s": round(loop_s, 4),
        "bound_s": round(bound_s, 4),
        "bound_over_loop": round(bound_s / loop_s, 3),
        "overhead_ms_per_step": round(1000 * (loop_s - bound_s) / (len(last.active_rows) + 1), 3),
        "decode_steps": len(last.active_rows),
        "mean_active_rows": round(statistics.mean(last.active_rows or [0]), 1),
        "response_tokens": sum(lengths),
        "length_min": min(lengths),
        "length_median": statistics.median(lengths),
        "length_max": max(lengths),
        "share_at_limit": round(sum(n == args.max_new_tokens for n in lengths) / len(lengths), 3),
        "replay_max_logprob_error": last.max_logprob_error,
    }


def forced_lengths_draw(lengths: list[int], eos_id: int, filler_id: int, device: torch.device):
    """A ``draw`` for ``HFRolloutBackend._decode`` that ends row i with EOS as its token lengths[i].

    The loop calls it once per step with the logits of its active rows, in order; it mirrors which
    rows those are (a row leaves when it is given EOS). Every other token is `filler_id`, log-prob 0."""
    planned = torch.tensor(lengths, device=device)
    state = {"active": torch.arange(len(lengths), device=device), "step": 0}

    def draw(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        active, step = state["active"], state["step"]
        if len(logits) != len(active):
            raise RuntimeError(f"step {step}: the loop has {len(logits)} rows, the plan {len(active)}")
        ends = planned[active] == step + 1
        state["active"], state["step"] = active[~ends], step + 1
        return torch.where(ends, eos_id, filler_id), torch.zeros(len(logits), device=logits.device)

    return draw


def short_lengths(count: int, longest: int) -> list[int]:
    """`count` lengths spread evenly up to `longest` (at least 1 each)."""
    return [max(1, round((i + 1) * longest / count)) for i in range(count)]


def one_long_among_short(backend: HFRolloutBackend, prompt: list[int], args) -> dict:
    """T_mixed against T_long + T_short (the second measurement of the docstring)."""
    device = next(backend.model.parameters()).device
    eos = backend.eos_token_ids[0]
    filler = next(
        i for i in itertools.count() if i not in backend.eos_token_ids and i != backend.pad_token_id
    )
    short = short_lengths(args.short_rows, max(1, args.max_new_tokens // 8))

    def decode(plan: list[int]) -> list[Rollout]:
        draw = forced_lengths_draw(plan, eos, filler, device)  # a new one per call: it keeps state
        return backend._decode([prompt], len(plan), args.max_new_tokens, draw, seed=None)

    plans = {"mixed": [args.max_new_tokens, *short], "long": [args.max_new_tokens], "short": short}
    # Every row to the limit: what the mixed batch would cost if finished rows stayed in it.
    plans["no_drop"] = [args.max_new_tokens] * len(plans["mixed"])
    as_planned = [len(r.response_ids) for r in decode(plans["mixed"])] == plans["mixed"]  # and a warm-up
    times = {name: [] for name in plans}
    for _ in range(args.repeats):  # the plans take turns, as loop and replay do
        for name, plan in plans.items():
            times[name].append(wall_seconds(lambda plan=plan: decode(plan), device)[0])
    mixed_s, long_s, short_s, no_drop_s = (statistics.median(times[name]) for name in plans)
    return {
        "short_rows": len(short),
        "short_length_max": max(short),
        "lengths_as_planned": as_planned,
        "mixed_s": round(mixed_s, 4),
        "long_s": round(long_s, 4),
        "short_s": round(short_s, 4),
        "mixed_over_separate": round(mixed_s / (long_s + short_s), 3),
        "no_drop_s": round(no_drop_s, 4),
        "no_drop_over_separate": round(no_drop_s / (long_s + short_s), 3),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", help="a saved model directory with its tokenizer (default: the cold start)"
    )
    parser.add_argument("--override", action="append", default=[], help="a config override, KEY=VALUE")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: the run's trainer.num_threads; 0: torch's)",
    )
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=576)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--short-rows", type=int, default=31, help="K: the short rows beside the long one")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    cfg = compose_config(LONG_TASK + args.override)
    device = torch.device(args.device)
    # As every entry point does (lrm_fast/runtime/process.py): subnormal floats slow CPU arithmetic.
    torch.set_flush_denormal(True)
    with threads(cfg.trainer.num_threads if args.threads is None else args.threads):
        model, tokenizer, path = load_policy(cfg, args.model, device)
        backend = HFRolloutBackend(model, tokenizer)  # one batch: no generation_batch_size chunks
        prompts = task_prompts(cfg, tokenizer, args.prompts)
        result = {
            "model": str(path),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "prompts": len(prompts),
            "group_size": args.group_size,
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "repeats": args.repeats,
            "loop": loop_against_bound(backend, prompts, args),
            "one_long_among_short": one_long_among_short(backend, prompts[0], args),
        }
    print(json.dumps(result, indent=1), flush=True)
    return result


if __name__ == "__main__":
    main()
