"""ratio_level="sequence" (GSPO, arXiv 2507.18071) against a float64 hand formula and the torch reference,
on packed sequences of mixed lengths: both backends (Triton under the interpreter), the fused head with
sequences that span chunks, padded-layout labels, in place, and micro-batch invariance. Old log-probs are
perturbed per sequence, so that sequence ratios land on both sides of the clip and the clip binds."""

import pytest
import torch
from kernel_inputs import BACKENDS, head_inputs, rel_err

from lrm_fast.kernels import grpo_loss, grpo_loss_from_hidden, reference

LOW, HIGH, T = 0.1, 0.15, 0.8
LENGTHS = [5, 1, 9, 3, 12, 7, 4, 6]  # N = 47; the fused head's chunks of 7 cut through most of them


def _sequences(seed: int, vocab: int = 61, lengths=LENGTHS, token_mean: bool = True, logits=None):
    """Logits (random, or the given ones), targets, old log-probs shifted per sequence, per-sequence
    advantages (one of them 0), weights (the token mean over all tokens, one sequence dropped; or random
    per token) and labels."""
    g = torch.Generator().manual_seed(seed)
    index = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    n = len(index)
    random_logits = torch.randn(n, vocab, generator=g) * 2
    logits = random_logits if logits is None else logits
    targets = torch.randint(0, vocab, (n,), generator=g)
    logp = reference.token_logprobs(logits.double(), targets, temperature=T).float()
    shift = 0.25 * torch.randn(len(lengths), generator=g)  # the sequence's drift from pi_old
    old = logp + shift[index] + 0.05 * torch.randn(n, generator=g)
    seq_advantages = torch.randn(len(lengths), generator=g)
    seq_advantages[2] = 0.0
    advantages = seq_advantages[index]
    if token_mean:
        weights = torch.full((n,), 1.0 / n)
        weights[index == 5] = 0.0  # a whole sequence out (a filtered response)
    else:
        weights = torch.rand(n, generator=g) / n
        weights[torch.rand(n, generator=g) < 0.2] = 0.0
    return logits, targets, old, advantages, weights, index


def _hand(logits, targets, old, advantages, weights, index):
    """GSPO's sequence form by hand, in float64, for weights constant over each sequence's kept tokens:
    s_i = exp(mean_{t in i, kept} (logp_t - old_t)); loss = sum_t w_t max(-A_i s_i, -A_i clip(s_i)); a
    token of an unclipped sequence gets d loss / d logp_t = sum_{t' in i} w_t' * (-A_i s_i) / n_i."""
    z = logits.double() / T
    p = torch.softmax(z, dim=-1)
    logp = torch.log_softmax(z, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    A, w = advantages.double(), weights.double()
    kept = w != 0
    loss, dlogp, ratios, clipped = 0.0, torch.zeros_like(logp), [], []
    for i in index.unique():
        member = index == i
        chosen = member & kept
        if not chosen.any():
            continue
        s = torch.exp((logp - old.double())[chosen].mean())
        a = A[chosen][0]
        bound = bool((a > 0 and s > 1 + HIGH) or (a < 0 and s < 1 - LOW))
        loss = loss + w[chosen].sum() * max(-a * s, -a * s.clamp(1 - LOW, 1 + HIGH))
        if not bound:
            dlogp[chosen] = w[chosen].sum() * -a * s / chosen.sum()
        ratios.append(s)
        clipped.append(bound)
    onehot = torch.nn.functional.one_hot(targets, logits.shape[-1]).double()
    grad = dlogp[:, None] * (onehot - p) / T
    return loss, grad, torch.stack(ratios), torch.tensor(clipped)


def _options(**extra):
    return dict(ratio_level="sequence", temperature=T, clip_low=LOW, clip_high=HIGH) | extra


@pytest.mark.parametrize("backend", BACKENDS)
def test_gspo_matches_the_hand_formula(backend):
    logits, targets, old, advantages, weights, index = _sequences(seed=1)
    x = logits.clone().requires_grad_()
    loss, stats = grpo_loss(
        x, targets, old, advantages, weights, sequence_index=index, backend=backend, **_options()
    )
    loss.backward()
    loss64, grad64, ratios, clipped = _hand(logits, targets, old, advantages, weights, index)
    assert rel_err(loss, loss64) <= 1e-5 and rel_err(x.grad, grad64) <= 1e-5
    assert stats["kept_sequences"].item() == len(ratios) == 7
    assert stats["seq_ratio_mean"].item() == pytest.approx(ratios.mean().item(), rel=1e-5)
    assert stats["seq_ratio_min"].item() == pytest.approx(ratios.min().item(), rel=1e-5)
    assert stats["seq_ratio_max"].item() == pytest.approx(ratios.max().item(), rel=1e-5)
    assert stats["seq_clip_fraction"].item() == pytest.approx(clipped.double().mean().item(), abs=1e-6)
    assert 0 < stats["seq_clip_fraction"].item() < 1 and stats["clip_fraction"].item() > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("token_mean", [True, False], ids=["token_mean", "random_weights"])
def test_gspo_matches_the_reference_with_every_term(backend, token_mean):
    """Loss, gradient and stats against autograd on the float64 reference, with KL, entropy and sign
    weights on; random weights per token too (each token's gradient carries its own weight)."""
    logits, targets, old, advantages, weights, index = _sequences(seed=2, token_mean=token_mean)
    ref = old + 0.1
    options = _options(ref_logprobs=ref, kl_coef=0.05, entropy_coef=0.01, negative_weight=0.5)
    x = logits.clone().requires_grad_()
    loss, stats = grpo_loss(
        x, targets, old, advantages, weights, sequence_index=index, backend=backend, **options
    )
    loss.backward()
    x64 = logits.double().requires_grad_()
    loss64, stats64 = reference.grpo_loss(
        x64, targets, old, advantages, weights, sequence_index=index, **options
    )
    loss64.backward()
    assert rel_err(loss, loss64) <= 1e-5 and rel_err(x.grad, x64.grad) <= 1e-5
    assert stats.keys() == stats64.keys()
    for name in stats:
        assert stats[name].item() == pytest.approx(stats64[name].item(), rel=1e-5, abs=1e-6), name
    assert stats["seq_clip_fraction"].item() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_labels_and_repeated_labels_mark_the_same_sequences(backend):
    """Rows of a padded batch (labels 0, 2, 3, ... with gaps) and labels reused by a later run give the
    same loss as 0..S-1: a sequence is a run of consecutive equal labels."""
    logits, targets, old, advantages, weights, index = _sequences(seed=3)
    rows = torch.tensor([0, 2, 3, 7, 8, 11, 12, 20])[index]
    reused = index % 2  # 0, 1, 0, 1, ...: every run is still its own sequence
    results = []
    for labels in (index, rows, reused):
        x = logits.clone().requires_grad_()
        loss, _ = grpo_loss(
            x, targets, old, advantages, weights, sequence_index=labels, backend=backend, **_options()
        )
        loss.backward()
        results.append((loss.detach(), x.grad))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gspo_in_place_equals_out_of_place(backend):
    logits, targets, old, advantages, weights, index = _sequences(seed=4)
    x = logits.clone().requires_grad_()
    loss, _ = grpo_loss(
        x, targets, old, advantages, weights, sequence_index=index, backend=backend, **_options()
    )
    loss.backward()
    y = logits.clone().requires_grad_()
    loss_inplace, _ = grpo_loss(
        y.clone(),
        targets,
        old,
        advantages,
        weights,
        sequence_index=index,
        backend=backend,
        inplace=True,
        **_options(),
    )
    loss_inplace.backward()
    assert torch.equal(loss, loss_inplace) and torch.allclose(x.grad, y.grad, rtol=0, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_head_gspo_matches_the_reference_across_chunks(backend):
    g = torch.Generator().manual_seed(5)
    n = sum(LENGTHS)
    hidden, weight = torch.randn(n, 16, generator=g), torch.randn(61, 16, generator=g) * 0.5
    logits = hidden @ weight.T
    _, targets, old, advantages, weights, index = _sequences(seed=5, token_mean=False, logits=logits)
    ref = old + 0.1
    options = _options(ref_logprobs=ref, kl_coef=0.05, entropy_coef=0.01)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, stats = grpo_loss_from_hidden(
        h,
        w,
        targets,
        old,
        advantages,
        weights,
        sequence_index=index,
        chunk_size=7,
        backend=backend,
        **options,
    )
    loss.backward()
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    loss64, stats64 = reference.grpo_loss(
        h64 @ w64.T, targets, old, advantages, weights, sequence_index=index, **options
    )
    loss64.backward()
    assert rel_err(loss, loss64) <= 1e-5
    assert rel_err(h.grad, h64.grad) <= 1e-5 and rel_err(w.grad, w64.grad) <= 1e-5
    for name in stats:
        assert stats[name].item() == pytest.approx(stats64[name].item(), rel=1e-5, abs=1e-6), name
    assert stats["seq_clip_fraction"].item() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_head_keeps_apart_runs_around_a_dropped_sequence(backend):
    """Labels reused by every other sequence (0, 1, 0, ...), and the sequence between two runs of label 1
    dropped (weight 0): the fused head drops its rows before the head, yet the two runs stay two
    sequences, as on the logits path."""
    g = torch.Generator().manual_seed(9)
    n = sum(LENGTHS)
    hidden, weight = torch.randn(n, 16, generator=g), torch.randn(61, 16, generator=g) * 0.5
    logits = hidden @ weight.T
    _, targets, old, advantages, weights, index = _sequences(seed=9, logits=logits)
    assert weights[index == 5].eq(0).all()  # sequence 5 is dropped, between sequences 4 and 6
    labels = index % 2
    options = _options()
    x = logits.clone().requires_grad_()
    loss, stats = grpo_loss(
        x, targets, old, advantages, weights, sequence_index=labels, backend=backend, **options
    )
    loss.backward()
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    fused, fused_stats = grpo_loss_from_hidden(
        h,
        w,
        targets,
        old,
        advantages,
        weights,
        sequence_index=labels,
        chunk_size=7,
        backend=backend,
        **options,
    )
    fused.backward()
    assert stats["kept_sequences"].item() == fused_stats["kept_sequences"].item() == 7
    assert rel_err(fused, loss) <= 1e-5 and rel_err(h.grad, x.grad @ weight) <= 1e-5
    for name in stats:
        assert fused_stats[name].item() == pytest.approx(stats[name].item(), rel=1e-5, abs=1e-6), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_gspo_is_invariant_to_the_cut_into_micro_batches(backend):
    """Weights normalised over the whole batch: the losses and gradients of two micro-batches, cut between
    sequences, add up to the whole batch's."""
    logits, targets, old, advantages, weights, index = _sequences(seed=6)
    x = logits.clone().requires_grad_()
    whole, _ = grpo_loss(
        x, targets, old, advantages, weights, sequence_index=index, backend=backend, **_options()
    )
    whole.backward()
    cut = int((index < 4).sum())
    y = logits.clone().requires_grad_()
    parts = [
        grpo_loss(
            y[s],
            targets[s],
            old[s],
            advantages[s],
            weights[s],
            sequence_index=index[s],
            backend=backend,
            **_options(),
        )[0]
        for s in (slice(0, cut), slice(cut, None))
    ]
    total = parts[0] + parts[1]
    total.backward()
    assert rel_err(total, whole) <= 1e-6 and rel_err(y.grad, x.grad) <= 1e-6


def test_one_step_on_policy_gspo_is_the_token_level_loss():
    """With pi_old = pi (old_logprobs None) every ratio is 1: the sequence level equals the token level."""
    logits, targets, _, advantages, weights, index = _sequences(seed=7)
    results = []
    for level in ("token", "sequence"):
        x = logits.clone().requires_grad_()
        loss, stats = grpo_loss(
            x, targets, None, advantages, weights, ratio_level=level, sequence_index=index, backend="torch"
        )
        loss.backward()
        results.append((loss.detach(), x.grad, stats))
    assert torch.allclose(results[0][0], results[1][0]) and torch.allclose(results[0][1], results[1][1])
    assert results[1][2]["seq_ratio_min"].item() == results[1][2]["seq_ratio_max"].item() == 1.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"ratio_level": "sequence", "objective": "cispo", "clip_low": 1.0},
            "objective='cispo' weighs tokens",
        ),
        ({"ratio_level": "sequence", "dual_clip": 3.0}, "ratio_level='sequence' \\(GSPO\\) has none"),
        ({"ratio_level": "sequence"}, "needs sequence_index"),
        ({"ratio_level": "sequence", "sequence_index": torch.zeros(3, dtype=torch.long)}, r"shape \[4\]"),
        ({"ratio_level": "sequence", "sequence_index": torch.zeros(4)}, "must be an integer tensor"),
    ],
)
def test_bad_sequence_options_are_refused(options, message):
    logits, targets, old, advantages, weights, _ = _sequences(seed=8, lengths=[1, 1, 2])
    with pytest.raises(ValueError, match=message):
        grpo_loss(logits, targets, old, advantages, weights, backend="torch", **options)
    hidden, head = torch.randn(4, 8), torch.randn(61, 8)
    with pytest.raises(ValueError, match=message):
        grpo_loss_from_hidden(hidden, head, targets, old, advantages, weights, backend="torch", **options)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gspo_at_qwen2_vocabulary():
    """The GPU twin: Triton row passes and cuBLAS matmuls at V = 151936, sequences of 100 tokens over
    chunks of 128, the logits path and the fused head against the float64 reference."""
    hidden, weight, targets, old, _, weights, ref = head_inputs(512, 1024, 151936, seed=21, device="cuda")
    index = torch.arange(512, device="cuda") // 100
    advantages = torch.randn(6, generator=torch.Generator().manual_seed(21)).cuda()[index]
    options = _options(ref_logprobs=ref, kl_coef=0.05, entropy_coef=0.01)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    vectors = (targets, old, advantages, weights)
    loss, stats = grpo_loss_from_hidden(
        h, w, *vectors, sequence_index=index, chunk_size=128, backend="triton", **options
    )
    loss.backward()
    x = (hidden @ weight.T).requires_grad_()
    logits_loss, _ = grpo_loss(x, *vectors, sequence_index=index, backend="triton", **options)
    logits_loss.backward()
    z64 = (hidden.double() @ weight.double().T).requires_grad_()
    loss64, stats64 = reference.grpo_loss(z64, *vectors, sequence_index=index, **options)
    loss64.backward()
    assert rel_err(loss, loss64) <= 1e-5 and rel_err(logits_loss, loss64) <= 1e-5
    assert rel_err(x.grad, z64.grad) <= 1e-5
    assert rel_err(h.grad, z64.grad @ weight.double()) <= 1e-5
    assert rel_err(w.grad, z64.grad.T @ hidden.double()) <= 1e-5
    assert stats["kept_sequences"].item() == stats64["kept_sequences"].item()
    assert stats["seq_ratio_mean"].item() == pytest.approx(stats64["seq_ratio_mean"].item(), rel=1e-5)
