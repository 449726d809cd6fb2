"""grpo_loss_from_hidden (both backends) against grpo_loss on the logits path and the float64 reference."""

import functools
import math

import pytest
import torch
from kernel_inputs import BACKENDS, head_inputs, rel_err

from benchmarks.memory import cpu_peak_supported, peak_memory_bytes
from lrm_fast.kernels import fused_head, grpo_loss, grpo_loss_from_hidden, reference, softmax_rows

# 48 tokens, about 15% of them zero-weight, in chunks of 16: three chunks, the last one partial.
N, H, V, CHUNK = 48, 32, 300, 16

OPTIONS = {
    "default": {},
    "sign_mask": {"positive_weight": 0.0, "negative_weight": 0.5},  # A > 0 tokens dropped before the head
    "on_policy": {"on_policy": True},
    "cispo": {"objective": "cispo", "clip_low": 0.2, "clip_high": 0.1, "kl_coef": 0.05, "entropy_coef": 0.01},
    "all": {
        "temperature": 0.7,
        "clip_high": 0.28,
        "dual_clip": 2.0,
        "negative_weight": 0.5,
        "kl_coef": 0.05,
        "entropy_coef": 0.01,
    },
}


def _loss_kwargs(inputs, options):
    """(old_logprobs, keyword arguments) of one call: on_policy drops old, kl_coef brings ref."""
    options = dict(options)
    old, ref = inputs[3], inputs[6]
    if options.pop("on_policy", False):
        old = None
    return old, dict(options, ref_logprobs=ref if options.get("kl_coef", 0) > 0 else None)


def _fused(inputs, options, backend, chunk_size=CHUNK, loss_scale=1.0):
    """Forward + backward of grpo_loss_from_hidden: (loss, stats, grad of hidden, grad of weight)."""
    hidden, weight, targets, _, advantages, weights, _ = inputs
    old, kwargs = _loss_kwargs(inputs, options)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, stats = grpo_loss_from_hidden(
        h, w, targets, old, advantages, weights, chunk_size=chunk_size, backend=backend, **kwargs
    )
    (loss * loss_scale).backward()
    return loss.detach(), stats, h.grad, w.grad


def _logits_path(inputs, options, loss_fn):
    """The same through materialised logits = hidden @ weight.T and a logits-level loss."""
    hidden, weight, targets, _, advantages, weights, _ = inputs
    old, kwargs = _loss_kwargs(inputs, options)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, stats = loss_fn(h @ w.T, targets, old, advantages, weights, **kwargs)
    loss.backward()
    return loss.detach(), stats, h.grad, w.grad


def _oracle(inputs, options):
    as64 = [t.double() if t is not None and t.is_floating_point() else t for t in inputs]
    return _logits_path(as64, options, reference.grpo_loss)


def _native_low_precision(monkeypatch, inputs, options):
    """torch computing everything (head matmul, softmax, backward) in the inputs' low precision."""
    with monkeypatch.context() as m:
        m.setattr(reference, "_compute_dtype", lambda t: t.dtype)
        return _logits_path(inputs, options, reference.grpo_loss)


def _assert_stats_close(stats, expected, rel=1e-5):
    for name, value in expected.items():
        assert stats[name].dtype == torch.float32
        assert stats[name].item() == pytest.approx(value.item(), rel=rel, abs=1e-6), name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_fp32_matches_the_logits_path(backend, options):
    inputs = head_inputs(N, H, V, seed=0)
    loss, stats, grad_h, grad_w = _fused(inputs, options, backend)
    loss_ref, stats_ref, grad_h_ref, grad_w_ref = _logits_path(
        inputs, options, functools.partial(grpo_loss, backend=backend)
    )
    assert rel_err(loss, loss_ref) <= 1e-5
    assert rel_err(grad_h, grad_h_ref) <= 1e-5
    assert rel_err(grad_w, grad_w_ref) <= 1e-5
    assert grad_h.dtype == grad_w.dtype == torch.float32
    _assert_stats_close(stats, stats_ref)
    # And both against float64 (the logits path's own tests hold it to 1e-5 there).
    loss64, stats64, grad_h64, grad_w64 = _oracle(inputs, options)
    assert rel_err(loss, loss64) <= 1e-5 and rel_err(grad_h, grad_h64) <= 1e-5
    assert rel_err(grad_w, grad_w64) <= 1e-5
    _assert_stats_close(stats, stats64, rel=1e-4)


def _assert_low_precision_error_within_twice_torchs_own(monkeypatch, inputs, options, ours, oracle):
    """Loss and both gradients. Torch's own error is that of its low-precision logits path, computed in
    that precision throughout or in fp32 after the head matmul, whichever is larger: the head output's
    rounding is common to all three and now and then dominates (a token's ratio pushed across a clip
    boundary); low-precision arithmetic adds to it or, as often as not in the loss, cancels part of it."""
    native = _native_low_precision(monkeypatch, inputs, options)
    upcast = _logits_path(inputs, options, reference.grpo_loss)
    for i, name in ((0, "loss"), (2, "grad of hidden"), (3, "grad of weight")):
        torch_own = max(rel_err(native[i], oracle[i]), rel_err(upcast[i], oracle[i]))
        assert rel_err(ours[i], oracle[i]) <= 2 * torch_own + 1e-6, (
            name,
            rel_err(ours[i], oracle[i]),
            torch_own,
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [OPTIONS["default"], OPTIONS["all"]], ids=["default", "all"])
def test_bf16_error_is_at_most_twice_torchs_own(monkeypatch, backend, options):
    inputs = head_inputs(N, H, V, torch.bfloat16, seed=1)
    ours, oracle = _fused(inputs, options, backend), _oracle(inputs, options)
    _assert_low_precision_error_within_twice_torchs_own(monkeypatch, inputs, options, ours, oracle)
    assert ours[2].dtype == ours[3].dtype == torch.bfloat16
    stats, stats64 = ours[1], oracle[1]
    assert stats["kept_tokens"].item() == stats64["kept_tokens"].item()
    # bf16 logits move the log-probs by ~1e-2: a statistic may count a token or two differently.
    for name in ("approx_kl", "ref_kl", "entropy"):
        assert stats[name].item() == pytest.approx(stats64[name].item(), rel=2e-2, abs=1e-3), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_at_qwen2_vocabulary(monkeypatch, dtype):
    """The GPU twin of the tests above: Triton row passes, cuBLAS matmuls, V = 151936, four chunks."""
    inputs = head_inputs(512, 1024, 151936, dtype, seed=11, device="cuda")
    ours, oracle = _fused(inputs, OPTIONS["all"], "triton", chunk_size=128), _oracle(inputs, OPTIONS["all"])
    if dtype == torch.bfloat16:
        _assert_low_precision_error_within_twice_torchs_own(monkeypatch, inputs, OPTIONS["all"], ours, oracle)
        return
    logits_path = _logits_path(inputs, OPTIONS["all"], functools.partial(grpo_loss, backend="triton"))
    for i in (0, 2, 3):  # loss, grad of hidden, grad of weight
        assert rel_err(ours[i], logits_path[i]) <= 1e-5 and rel_err(ours[i], oracle[i]) <= 1e-5, i


@pytest.mark.parametrize("backend", BACKENDS)
def test_unaligned_vocabulary_over_one_interpreter_block(backend):
    inputs = head_inputs(6, 64, 33001, seed=2)  # V just over the interpreter's 32768-wide block
    loss, stats, grad_h, grad_w = _fused(inputs, OPTIONS["all"], backend, chunk_size=4)
    loss64, stats64, grad_h64, grad_w64 = _oracle(inputs, OPTIONS["all"])
    assert rel_err(loss, loss64) <= 1e-5 and rel_err(grad_h, grad_h64) <= 1e-5
    assert rel_err(grad_w, grad_w64) <= 1e-5
    _assert_stats_close(stats, stats64, rel=1e-4)


@pytest.mark.parametrize("chunk_size", [1, 5, 1000, None], ids=["one_row", "uneven", "one_chunk", "auto"])
def test_chunking_is_exact(chunk_size):
    inputs = head_inputs(N, H, V, seed=3)
    loss, stats, grad_h, grad_w = _fused(inputs, OPTIONS["all"], "torch", chunk_size=chunk_size)
    loss_ref, stats_ref, grad_h_ref, grad_w_ref = _fused(inputs, OPTIONS["all"], "torch", chunk_size=N)
    # Mathematically the same sums; in floating point the matmuls block the rows differently.
    assert loss.item() == pytest.approx(loss_ref.item(), rel=1e-6)
    assert rel_err(grad_h, grad_h_ref) <= 1e-6 and rel_err(grad_w, grad_w_ref) <= 1e-6
    _assert_stats_close(stats, stats_ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_weight_and_dropped_sign_tokens_skip_the_head(monkeypatch, backend):
    hidden, weight, targets, old, advantages, weights, ref = head_inputs(32, H, 257, seed=4)
    advantages[:8] = 1.0  # dropped by positive_weight=0
    weights[8:12] = 0.0  # masked tokens
    dropped = (weights == 0) | (advantages > 0)
    rows_seen = []
    rows_fwd = fused_head.ROW_PASSES[backend]
    spy = lambda logits, *args, **kwargs: (
        rows_seen.append(logits.shape[0]) or rows_fwd(logits, *args, **kwargs)
    )
    monkeypatch.setitem(fused_head.ROW_PASSES, backend, spy)
    inputs = (hidden, weight, targets, old, advantages, weights, ref)
    options = {"positive_weight": 0.0, "kl_coef": 0.1, "entropy_coef": 0.1}
    _, stats, grad_h, grad_w = _fused(inputs, options, backend, chunk_size=8)
    assert sum(rows_seen) == (~dropped).sum().item()  # only the kept tokens reach the head matmul
    assert torch.all(grad_h[dropped] == 0)
    assert torch.all(grad_h[~dropped].abs().sum(-1) > 0)
    assert stats["kept_tokens"].item() == (~dropped).sum().item()
    _, _, grad_h64, grad_w64 = _oracle(inputs, options)
    assert rel_err(grad_h, grad_h64) <= 1e-5 and rel_err(grad_w, grad_w64) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_weights_zero(backend):
    hidden, weight, targets, old, advantages, _, ref = head_inputs(8, H, 100, seed=5)
    inputs = (hidden, weight, targets, old, advantages, torch.zeros(8), ref)
    loss, stats, grad_h, grad_w = _fused(inputs, OPTIONS["all"], backend)
    assert loss.item() == 0.0 and torch.all(grad_h == 0) and torch.all(grad_w == 0)
    assert stats["kept_tokens"].item() == 0
    assert all(math.isfinite(v.item()) for v in stats.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_gives_zero_without_launching(monkeypatch, backend):
    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("a kernel was launched for N = 0")

    monkeypatch.setattr(softmax_rows, "_softmax_stats_kernel", NoLaunch())
    monkeypatch.setattr(softmax_rows, "_softmax_grad_kernel", NoLaunch())
    empty = torch.zeros(0)
    inputs = (
        torch.zeros(0, H),
        torch.randn(50, H),
        torch.zeros(0, dtype=torch.long),
        empty,
        empty,
        empty,
        None,
    )
    loss, stats, grad_h, grad_w = _fused(inputs, {}, backend)
    assert loss.item() == 0.0 and grad_h.shape == (0, H)
    assert grad_w.shape == (50, H) and torch.all(grad_w == 0)  # a dense zero: every FSDP rank reduces it
    assert stats["kept_tokens"].item() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss_scale", [3.0, 0.0], ids=["grad_output_3", "grad_output_0"])
def test_backward_scales_the_stored_gradients(backend, loss_scale):
    inputs = head_inputs(16, H, 128, seed=6)
    _, _, grad_h, grad_w = _fused(inputs, {}, backend, loss_scale=loss_scale)
    _, _, grad_h64, grad_w64 = _oracle(inputs, {})
    if loss_scale == 0.0:
        assert torch.all(grad_h == 0) and torch.all(grad_w == 0)
    else:
        assert rel_err(grad_h, loss_scale * grad_h64) <= 1e-5
        assert rel_err(grad_w, loss_scale * grad_w64) <= 1e-5


def test_frozen_head_gets_no_gradient():
    hidden, weight, targets, old, advantages, weights, _ = head_inputs(16, H, 128, seed=7)
    h = hidden.clone().requires_grad_()
    loss, _ = grpo_loss_from_hidden(h, weight, targets, old, advantages, weights, chunk_size=4)
    loss.backward()
    assert weight.grad is None
    _, _, grad_h64, _ = _oracle((hidden, weight, targets, old, advantages, weights, None), {})
    assert rel_err(h.grad, grad_h64) <= 1e-5


def test_tied_embeddings_accumulate_both_uses_of_the_weight():
    """hidden computed from the same matrix (a tied embedding): both gradient paths add up."""
    _, weight, targets, old, advantages, weights, _ = head_inputs(24, H, 97, seed=8)
    input_ids = torch.randint(0, 97, (24,), generator=torch.Generator().manual_seed(8))
    mix = torch.randn(H, H, generator=torch.Generator().manual_seed(9)) / H**0.5

    def grads(loss_of):
        w = weight.clone().requires_grad_()
        hidden = torch.tanh(w[input_ids] @ mix)  # embedding lookup, then a "model"
        loss, _ = loss_of(hidden, w)
        loss.backward()
        return loss.detach(), w.grad

    args = (targets, old, advantages, weights)
    loss, grad = grads(lambda h, w: grpo_loss_from_hidden(h, w, *args, chunk_size=5))
    loss_ref, grad_ref = grads(lambda h, w: grpo_loss(h @ w.T, *args))
    assert rel_err(loss, loss_ref) <= 1e-5 and rel_err(grad, grad_ref) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_backward_is_refused(backend):
    """Backward scales the stored gradients in place: a second one would hand them out scaled twice."""
    hidden, weight, targets, old, advantages, weights, _ = head_inputs(4, H, 32, seed=10)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, _ = grpo_loss_from_hidden(h, w, targets, old, advantages, weights, backend=backend)
    (3.0 * loss).backward(retain_graph=True)
    first = h.grad.clone(), w.grad.clone()
    with pytest.raises(RuntimeError, match="grpo_loss_from_hidden: backward ran twice"):
        (3.0 * loss).backward()
    assert torch.equal(h.grad, first[0]) and torch.equal(w.grad, first[1])
    _, _, grad_h64, grad_w64 = _oracle((hidden, weight, targets, old, advantages, weights, None), {})
    assert rel_err(first[0], 3.0 * grad_h64) <= 1e-5 and rel_err(first[1], 3.0 * grad_w64) <= 1e-5


BAD_INPUTS = {
    "hidden_1d": ({"hidden": torch.randn(H)}, "hidden must be a 2-D"),
    "weight_width": ({"weight": torch.randn(10, H + 1)}, r"weight must have shape \[V, 32\]"),
    "dtype_mismatch": ({"weight": torch.randn(10, H, dtype=torch.bfloat16)}, "weight has dtype"),
    "target_outside_vocab": ({"targets": torch.tensor([0, 1, 10, 2])}, r"id 10, outside .* \[0, 10\)"),
    "advantages_length": (
        {"advantages": torch.randn(5)},
        r"advantages must have shape \[4\] to match hidden",
    ),
    "chunk_size_zero": ({"chunk_size": 0}, "chunk_size must be a positive int"),
    "kl_without_ref": ({"kl_coef": 0.1}, "ref_logprobs is required"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("bad", "message"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_value_error(backend, bad, message):
    args = {
        "hidden": torch.randn(4, H),
        "weight": torch.randn(10, H),
        "targets": torch.randint(0, 10, (4,)),
        "old_logprobs": torch.randn(4),
        "advantages": torch.randn(4),
        "weights": torch.ones(4),
    }
    args.update(bad)
    options = {k: args.pop(k) for k in ("chunk_size", "kl_coef") if k in args}
    with pytest.raises(ValueError, match=message):
        grpo_loss_from_hidden(*args.values(), backend=backend, **options)


MEMORY_N, MEMORY_H, MEMORY_V = 4096, 512, 32000  # fp32 logits: 524 MB, and as much again for their gradient


@pytest.mark.slow
@pytest.mark.skipif(not cpu_peak_supported(), reason="needs Linux /proc peak-RSS accounting")
def test_peak_memory_is_at_most_a_quarter_of_the_logits_path():
    hidden, weight, targets, old, advantages, weights, ref = head_inputs(MEMORY_N, MEMORY_H, MEMORY_V)
    args = (targets, old, advantages, weights)
    kwargs = dict(ref_logprobs=ref, kl_coef=0.001, entropy_coef=0.001, backend="torch")
    h, w = hidden.requires_grad_(), weight.requires_grad_()

    def fused():
        return grpo_loss_from_hidden(h, w, *args, **kwargs)[0]

    def logits_path():
        return grpo_loss(h @ w.T, *args, **kwargs)[0]

    def peak(loss_of):
        h.grad = w.grad = None  # before the baseline: freeing the last step's gradients is not this one's

        def step():
            loss_of().backward()
            return h.grad, w.grad  # the gradients a step produces count for both

        return peak_memory_bytes(step)

    for loss_of in (fused, logits_path):
        peak(loss_of)  # warm-up: first-call allocations of the process are not the op's
    peak_fused, peak_logits = peak(fused), peak(logits_path)
    mib = (round(peak_fused / 2**20), round(peak_logits / 2**20))
    assert peak_fused <= peak_logits / 4, mib
    # The two gradients (74 MB) and a few chunk-sized temporaries: never anything of the logits' size.
    assert peak_fused < MEMORY_N * MEMORY_V * 4 / 2, mib
