"""`lrm-fast-kernel-check`: run every fused op against its float64 reference on this machine and print
the largest errors, so a new install (or a new GPU) can be trusted before training on it."""

import argparse
import time

import torch

from lrm_fast.kernels import group_advantages, grpo_loss, reference, token_logprobs


def _max_rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp(min=1e-12)).item()


def _loss_inputs(n: int, vocab: int, dtype: torch.dtype, device: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, vocab, generator=g) * 2).to(dtype=dtype, device=device)
    targets = torch.randint(0, vocab, (n,), generator=g).to(device)
    old = (
        reference.token_logprobs(logits.cpu().double(), targets.cpu()) + 0.2 * torch.randn(n, generator=g)
    ).float()
    advantages = torch.randn(n, generator=g)
    weights = torch.rand(n, generator=g) / n
    return logits, targets, old.to(device), advantages.to(device), weights.to(device)


def check(
    n: int, vocab: int, dtype: torch.dtype, backend: str, device: str, seed: int = 0
) -> dict[str, float]:
    logits, targets, old, advantages, weights = _loss_inputs(n, vocab, dtype, device, seed)
    options = dict(temperature=0.8, dual_clip=3.0, entropy_coef=0.01)
    x = logits.clone().requires_grad_()
    start = time.perf_counter()
    loss, _ = grpo_loss(x, targets, old, advantages, weights, backend=backend, **options)
    loss.backward()
    elapsed = time.perf_counter() - start
    x64 = logits.cpu().double().requires_grad_()
    args = (targets.cpu(), old.cpu().double(), advantages.cpu().double(), weights.cpu().double())
    loss64, _ = reference.grpo_loss(x64, *args, **options)
    loss64.backward()

    logp = token_logprobs(logits, targets, temperature=0.8, backend=backend)
    logp64 = reference.token_logprobs(logits.cpu().double(), targets.cpu(), temperature=0.8)
    rewards = torch.randint(0, 2, (n,)).float().to(device)
    adv = group_advantages(rewards, group_size=8 if n % 8 == 0 else 1, backend=backend).advantages
    adv64 = reference.group_advantages(rewards.cpu(), group_size=8 if n % 8 == 0 else 1).advantages
    return {
        "grpo_loss": _max_rel_err(loss.detach().cpu(), loss64.detach()),
        "grpo_loss grad": _max_rel_err(x.grad.cpu(), x64.grad),
        "token_logprobs": _max_rel_err(logp.cpu(), logp64),
        "group_advantages": (adv.cpu() - adv64).abs().max().item(),
        "fwd+bwd ms": 1e3 * elapsed,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=256, help="N, packed response tokens")
    parser.add_argument("--vocab", type=int, default=32000, help="V, vocabulary size")
    parser.add_argument("--backend", default="auto", choices=["auto", "triton", "torch"])
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device={device} backend={args.backend} N={args.tokens} V={args.vocab}")
    print(f"{'dtype':<10}{'op':<20}{'max rel. error vs fp64':>24}")
    for dtype in (torch.float32, torch.bfloat16):
        result = check(args.tokens, args.vocab, dtype, args.backend, device)
        for name, value in result.items():
            fmt = f"{value:>24.1f}" if name.endswith("ms") else f"{value:>24.2e}"
            print(f"{str(dtype).removeprefix('torch.'):<10}{name:<20}{fmt}")


if __name__ == "__main__":
    main()
