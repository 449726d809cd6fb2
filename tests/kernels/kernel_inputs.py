"""Random but meaningful inputs for the kernel tests, and the comparison rules they use."""

import torch

from lrm_fast.kernels import reference

BACKENDS = ["torch", "triton"]


def loss_inputs(
    n: int, vocab: int, dtype: torch.dtype = torch.float32, seed: int = 0, ratio_spread: float = 0.3
):
    """Logits, targets and per-token vectors for grpo_loss.

    old log-probs are the current ones plus noise, so ratios spread around 1 and land on both sides of
    the clip range; advantages mix signs and exact zeros; weights include exact zeros.
    """
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, vocab, generator=g) * 2).to(dtype)
    targets = torch.randint(0, vocab, (n,), generator=g)
    logp = reference.token_logprobs(logits.double(), targets).float()
    old = logp + ratio_spread * torch.randn(n, generator=g)
    advantages = torch.randn(n, generator=g)
    advantages[torch.rand(n, generator=g) < 0.15] = 0.0
    weights = torch.rand(n, generator=g) / max(n, 1)
    weights[torch.rand(n, generator=g) < 0.15] = 0.0
    ref = logp + 0.2 * torch.randn(n, generator=g)
    return logits, targets, old, advantages, weights, ref


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest error relative to the reference's largest magnitude (stable where entries cross 0)."""
    scale = ref.double().abs().max().clamp(min=1e-30)
    return ((x.double() - ref.double()).abs().max() / scale).item()


def assert_close_to_oracle(x: torch.Tensor, oracle: torch.Tensor, native_low_precision: torch.Tensor | None):
    """fp32: within 1e-5 relative. bf16/fp16: at most 2x the error of torch computing in that precision."""
    if native_low_precision is None:
        assert rel_err(x, oracle) <= 1e-5, rel_err(x, oracle)
    else:
        ours, torch_own = rel_err(x, oracle), rel_err(native_low_precision, oracle)
        assert ours <= 2 * torch_own + 1e-6, (ours, torch_own)


def head_inputs(
    n: int, hidden_size: int, vocab: int, dtype: torch.dtype = torch.float32, seed: int = 0, device="cpu"
):
    """Hidden states, an LM-head weight and the per-token vectors of grpo_loss for logits = hidden @ W.T.

    Logits come out with a standard deviation of about 2, like loss_inputs'; old and reference log-probs
    are the float64 current ones plus noise, so the ratios land on both sides of the clip range. The same
    seed gives the same values on every device (drawn on the CPU).
    """
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, hidden_size, generator=g)
    weight = torch.randn(vocab, hidden_size, generator=g) * (2 / hidden_size**0.5)
    hidden, weight = hidden.to(device, dtype), weight.to(device, dtype)
    targets = torch.randint(0, vocab, (n,), generator=g).to(device)
    # In chunks of tokens: the memory test's shape would need 1 GB for the logits at once.
    logp = torch.cat(
        [
            reference.token_logprobs(h.double() @ weight.double().T, t).float()
            for h, t in zip(hidden.split(256), targets.split(256), strict=True)
        ]
    )
    old = logp + 0.3 * torch.randn(n, generator=g).to(device)
    advantages = torch.randn(n, generator=g)
    advantages[torch.rand(n, generator=g) < 0.15] = 0.0
    weights = torch.rand(n, generator=g) / max(n, 1)
    weights[torch.rand(n, generator=g) < 0.15] = 0.0
    ref = logp + 0.2 * torch.randn(n, generator=g).to(device)
    return hidden, weight, targets, old, advantages.to(device), weights.to(device), ref
