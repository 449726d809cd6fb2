"""Time the policy objectives of grpo_loss (or the fused head) in alternating order, for a loaded machine.

    python -m benchmarks.interleaved_objectives [--op grpo_loss|fused_head] [--rounds 8] [--backend torch]

pytest-benchmark times one case's rounds one after another, so on a machine whose load drifts (shared
cores, training runs beside it) the ratio of two cases carries the drift. Here each round calls every
objective once, in an order reversed every other round, and the ratios of the medians and of the minima
(the least disturbed call) to the clipped token-level loss's are printed: forward + backward, on the
inputs of bench_grpo_loss.py's cpu-n1024 preset (or bench_fused_head.py's cpu-n256 one). The suites stay
the record; this is the check on their ratios.
"""

import argparse
import json
import statistics
import time

import torch

from lrm_fast.kernels import grpo_loss, grpo_loss_from_hidden

from .bench_fused_head import PRESETS as HEAD_PRESETS
from .bench_fused_head import make_head_inputs
from .cases import LOGITS_PRESETS, make_logits_inputs

OBJECTIVES = {"clipped": {}, "cispo": {"objective": "cispo"}, "gspo": {"ratio_level": "sequence"}}
OPTIONS = {"temperature": 1.0, "clip_low": 0.2, "clip_high": 0.2}


def _calls(op: str, backend: str):
    """{objective: (call, leaves)}: a forward + backward of each objective on the same inputs."""
    if op == "grpo_loss":
        preset = next(p for p in LOGITS_PRESETS if p.name.startswith("cpu-n1024"))
        inputs = make_logits_inputs(preset)
        args = (inputs.logits, inputs.targets, inputs.old_logprobs, inputs.advantages, inputs.weights)
        loss_fn, leaves = lambda **o: grpo_loss(*args, **o), (inputs.logits,)
    else:
        preset = next(p for p in HEAD_PRESETS if p.name.startswith("cpu-n256"))
        inputs = make_head_inputs(preset)
        args = (inputs.targets, inputs.old_logprobs, inputs.advantages, inputs.weights)
        loss_fn = lambda **o: grpo_loss_from_hidden(inputs.hidden, inputs.weight, *args, **o)
        leaves = (inputs.hidden, inputs.weight)
    index = torch.arange(len(inputs.targets)) // inputs.seq_len
    calls = {}
    for name, extra in OBJECTIVES.items():
        options = OPTIONS | extra | {"backend": backend, "sequence_index": index}
        calls[name] = (lambda options=options: loss_fn(**options)[0].backward(), leaves)
    return calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--op", choices=("grpo_loss", "fused_head"), default="grpo_loss")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    calls = _calls(args.op, args.backend)
    times = {name: [] for name in calls}
    for round_ in range(args.rounds):
        order = list(calls) if round_ % 2 == 0 else list(calls)[::-1]
        for name in order:
            call, leaves = calls[name]
            for leaf in leaves:
                leaf.grad = None
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratios = {name: m / medians["clipped"] for name, m in medians.items()}
    minima = {name: min(t) / min(times["clipped"]) for name, t in times.items()}
    print(json.dumps({"op": args.op, "backend": args.backend, "rounds": args.rounds,
                      "median_ms": {k: round(v * 1e3, 1) for k, v in medians.items()},
                      "versus_clipped": {k: round(v, 3) for k, v in ratios.items()},
                      "minimum_versus_clipped": {k: round(v, 3) for k, v in minima.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
