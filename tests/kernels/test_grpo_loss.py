"""grpo_loss (both backends) against the float64 reference, plus the properties the trainer relies on."""

import math

import pytest
import torch
from kernel_inputs import BACKENDS, assert_close_to_oracle, loss_inputs, rel_err

from lrm_fast.kernels import grpo_loss, reference, softmax_rows

OPTIONS = {
    "default": {},
    "asym_clip": {"clip_low": 0.2, "clip_high": 0.28},  # DAPO's clip-higher
    "dual_clip": {"dual_clip": 1.5},
    "sign_mask": {"positive_weight": 0.0, "negative_weight": 0.5},  # negative-only, halved
    "weighted": {"positive_weight": 0.1},  # W-REINFORCE's lambda
    "kl_entropy": {"kl_coef": 0.05, "entropy_coef": 0.01},
    "on_policy": {"on_policy": True},
    "temperature": {"temperature": 0.6},
    "cispo": {"objective": "cispo", "clip_low": 1.0, "clip_high": 0.28},  # no lower bound, as MiniMax-M1
    "cispo_all": {
        "objective": "cispo",
        "temperature": 0.7,
        "clip_low": 0.2,
        "clip_high": 0.1,
        "negative_weight": 0.5,
        "kl_coef": 0.05,
        "entropy_coef": 0.01,
    },
    "all": {
        "temperature": 0.7,
        "clip_high": 0.28,
        "dual_clip": 2.0,
        "negative_weight": 0.5,
        "kl_coef": 0.05,
        "entropy_coef": 0.01,
    },
}

SHAPES = {
    "single_token": (1, 1000),
    "unaligned_vocab": (6, 33001),  # V just over one interpreter block and far from a GPU block multiple
    "llama3_vocab": (2, 128256),
    "qwen2_vocab": (2, 151936),
}


def _run(logits, targets, old, advantages, weights, ref, options, backend=None, loss_scale=1.0):
    """Forward + backward; returns (loss, stats, grad). backend=None runs the reference."""
    options = dict(options)
    if options.pop("on_policy", False):
        old = None
    use_ref = options.get("kl_coef", 0) > 0
    x = logits.clone().requires_grad_()
    kwargs = dict(options, ref_logprobs=ref if use_ref else None)
    if backend is None:
        loss, stats = reference.grpo_loss(x, targets, old, advantages, weights, **kwargs)
    else:
        loss, stats = grpo_loss(x, targets, old, advantages, weights, backend=backend, **kwargs)
    (loss * loss_scale).backward()
    return loss.detach(), stats, x.grad


def _oracle(logits, targets, old, advantages, weights, ref, options):
    as64 = [None if t is None else t.double() for t in (old, advantages, weights, ref)]
    return _run(logits.double(), targets, as64[0], as64[1], as64[2], as64[3], options)


def _native_low_precision(monkeypatch, logits, *args):
    """torch's own result when it computes in the logits' low precision (the tolerance yardstick)."""
    with monkeypatch.context() as m:
        m.setattr(reference, "_compute_dtype", lambda t: t.dtype)
        return _run(logits, *args)


def _check_against_oracle(monkeypatch, backend, n, vocab, dtype, options, seed=0):
    inputs = loss_inputs(n, vocab, dtype, seed=seed)
    loss, stats, grad = _run(*inputs, options, backend=backend)
    loss64, stats64, grad64 = _oracle(*inputs, options)
    native = None if dtype == torch.float32 else _native_low_precision(monkeypatch, *inputs, options)
    assert_close_to_oracle(loss, loss64, None if native is None else native[0])
    assert_close_to_oracle(grad, grad64, None if native is None else native[2])
    assert grad.dtype == dtype
    for name, value in stats64.items():
        assert stats[name].dtype == torch.float32
        assert stats[name].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-5), name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_grpo_loss_options_match_reference(monkeypatch, backend, dtype, options):
    _check_against_oracle(monkeypatch, backend, 48, 300, dtype, options)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_grpo_loss_shapes_match_reference(monkeypatch, backend, dtype, shape):
    _check_against_oracle(monkeypatch, backend, *shape, dtype, OPTIONS["all"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_logits_match_reference(monkeypatch, backend):
    _check_against_oracle(monkeypatch, backend, 16, 500, torch.float16, OPTIONS["all"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_weight_and_dropped_sign_give_exactly_zero_gradient(backend):
    logits, targets, old, advantages, weights, ref = loss_inputs(32, 257, seed=1)
    advantages[:8] = 1.0  # dropped by positive_weight=0
    weights[8:12] = 0.0  # masked tokens
    options = {"positive_weight": 0.0, "kl_coef": 0.1, "entropy_coef": 0.1}
    _, stats, grad = _run(logits, targets, old, advantages, weights, ref, options, backend=backend)
    dropped = (weights == 0) | (advantages > 0)
    assert torch.all(grad[dropped] == 0)
    assert torch.all(grad[~dropped].abs().sum(-1) > 0)
    assert stats["kept_tokens"].item() == (~dropped).sum().item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_weights_zero(backend):
    logits, targets, old, advantages, _, ref = loss_inputs(8, 100, seed=2)
    loss, stats, grad = _run(logits, targets, old, advantages, torch.zeros(8), ref, {}, backend=backend)
    assert loss.item() == 0.0 and torch.all(grad == 0)
    assert stats["kept_tokens"].item() == 0
    assert all(math.isfinite(v.item()) for v in stats.values())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("direction", [1e4, -1e4], ids=["logp_far_above_old", "logp_far_below_old"])
def test_huge_log_ratio_stays_finite(backend, direction):
    logits, targets, old, advantages, weights, ref = loss_inputs(16, 64, seed=3)
    old = old - direction  # logp - old = +-1e4 (plus noise): the clamp must keep exp() finite
    options = {"kl_coef": 0.1}
    loss, stats, grad = _run(
        logits, targets, old, advantages, weights, ref - direction, options, backend=backend
    )
    loss64, _, grad64 = _oracle(logits, targets, old, advantages, weights, ref - direction, options)
    assert math.isfinite(loss.item()) and torch.isfinite(grad).all()
    assert all(math.isfinite(v.item()) for v in stats.values())
    assert rel_err(loss, loss64) <= 1e-5 and rel_err(grad, grad64) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_minus_inf_logits_are_a_masked_vocabulary(backend):
    logits, targets, old, advantages, weights, ref = loss_inputs(24, 200, seed=4)
    masked = torch.zeros_like(logits, dtype=torch.bool)
    masked[:, 150:] = True
    masked[:4] = False  # some rows fully unmasked
    masked[torch.arange(24), targets] = False
    logits[masked] = float("-inf")
    options = OPTIONS["all"]
    loss, _, grad = _run(logits, targets, old, advantages, weights, ref, options, backend=backend)
    loss64, _, grad64 = _oracle(logits, targets, old, advantages, weights, ref, options)
    assert torch.isfinite(grad).all() and torch.all(grad[masked] == 0)
    assert rel_err(loss, loss64) <= 1e-5 and rel_err(grad, grad64) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_returns_zero_without_launching(monkeypatch, backend):
    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("a kernel was launched for N = 0")

    monkeypatch.setattr(softmax_rows, "_softmax_stats_kernel", NoLaunch())
    monkeypatch.setattr(softmax_rows, "_softmax_grad_kernel", NoLaunch())
    empty = torch.zeros(0)
    logits = torch.zeros(0, 50, requires_grad=True)
    loss, stats = grpo_loss(logits, torch.zeros(0, dtype=torch.long), empty, empty, empty, backend=backend)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.shape == (0, 50)
    assert stats["kept_tokens"].item() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "loss_scale", [1.0, 3.0, 0.0], ids=["grad_output_1", "grad_output_3", "grad_output_0"]
)
def test_backward_scales_the_stored_gradient(backend, loss_scale):
    inputs = loss_inputs(16, 128, seed=5)
    _, _, grad = _run(*inputs, {}, backend=backend, loss_scale=loss_scale)
    _, _, grad64 = _oracle(*inputs, {})
    if loss_scale == 0.0:
        assert torch.all(grad == 0)
    else:
        assert rel_err(grad, loss_scale * grad64) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_micro_batches_add_up_to_the_whole_batch(backend):
    """With global weights the loss is a plain sum over tokens: any split gives the same loss and grads."""
    logits, targets, old, advantages, weights, ref = loss_inputs(40, 97, seed=6)
    options = dict(OPTIONS["all"], ref_logprobs=ref)
    whole = logits.clone().requires_grad_()
    loss, _ = grpo_loss(whole, targets, old, advantages, weights, backend=backend, **options)
    loss.backward()
    parts = logits.clone().requires_grad_()
    total = 0.0
    for idx in torch.tensor_split(torch.arange(40), [3, 4, 25]):
        kwargs = dict(options, ref_logprobs=ref[idx])
        part, _ = grpo_loss(
            parts[idx], targets[idx], old[idx], advantages[idx], weights[idx], backend=backend, **kwargs
        )
        part.backward()
        total = total + part.detach()
    assert total.item() == pytest.approx(loss.item(), rel=1e-6, abs=1e-9)
    torch.testing.assert_close(parts.grad, whole.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_temperature_is_a_rescaling_of_the_logits(backend):
    """At temperature T the loss, entropy and clip statistics are those of logits / T at temperature 1."""
    logits, targets, old, advantages, weights, ref = loss_inputs(20, 150, seed=7)
    options = {"kl_coef": 0.05, "entropy_coef": 0.02, "ref_logprobs": ref}
    x = logits.clone().requires_grad_()
    loss_t, stats_t = grpo_loss(
        x, targets, old, advantages, weights, temperature=0.5, backend=backend, **options
    )
    loss_t.backward()
    y = (logits / 0.5).requires_grad_()
    loss_1, stats_1 = grpo_loss(y, targets, old, advantages, weights, backend=backend, **options)
    loss_1.backward()
    assert loss_t.item() == pytest.approx(loss_1.item(), rel=1e-5)
    for name in stats_t:
        assert stats_t[name].item() == pytest.approx(stats_1[name].item(), rel=1e-5, abs=1e-7), name
    torch.testing.assert_close(x.grad, y.grad / 0.5, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_writes_the_gradient_over_the_logits(backend):
    inputs = loss_inputs(16, 300, seed=8)
    _, _, grad = _run(*inputs, OPTIONS["all"], backend=backend)
    logits, targets, old, advantages, weights, ref = inputs
    leaf = logits.clone().requires_grad_()
    produced = leaf * 1.0  # logits as a model makes them: a non-leaf whose gradient flows on
    seen = []
    produced.register_hook(lambda g: seen.append(g.data_ptr()))
    options = dict(OPTIONS["all"], ref_logprobs=ref, inplace=True, backend=backend)
    loss, _ = grpo_loss(produced, targets, old, advantages, weights, **options)
    loss.backward()
    torch.testing.assert_close(leaf.grad, grad, rtol=0, atol=0)
    assert seen == [produced.data_ptr()]  # the gradient is the logits' own buffer: no second [N, V]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
def test_second_backward_is_refused(backend, inplace):
    """Backward scales the stored gradient in place: a second one would hand it out scaled twice."""
    logits, targets, old, advantages, weights, _ = loss_inputs(4, 32, seed=9)
    leaf = logits.clone().requires_grad_()
    x = leaf * 1.0  # a non-leaf, so that inplace=True may write over it
    loss, _ = grpo_loss(x, targets, old, advantages, weights, inplace=inplace, backend=backend)
    (2.0 * loss).backward(retain_graph=True)
    first = leaf.grad.clone()
    with pytest.raises(RuntimeError, match="grpo_loss: backward ran twice"):
        (2.0 * loss).backward()
    assert torch.equal(leaf.grad, first)  # the refused backward accumulated nothing
    _, _, grad64 = _oracle(logits, targets, old, advantages, weights, None, {})
    assert rel_err(first, 2.0 * grad64) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_fails_loudly_for_other_users_of_the_logits(backend):
    """Another op that saved the logits for its backward must not silently read the gradient."""
    logits, targets, old, advantages, weights, _ = loss_inputs(8, 64, seed=10)
    x = logits.clone().requires_grad_() * 1.0
    other = (x * x).sum()  # saves x for backward
    loss, _ = grpo_loss(x, targets, old, advantages, weights, inplace=True, backend=backend)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + other).backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_targets_give_the_same_result(backend):
    """A strided view of the targets (a column of a [N, 2] tensor): the kernels must not read it flat."""
    logits, targets, old, advantages, weights, ref = loss_inputs(12, 80, seed=11)
    strided = torch.stack([targets, torch.zeros_like(targets)], dim=1)[:, 0]
    assert not strided.is_contiguous()
    loss, stats, grad = _run(logits, targets, old, advantages, weights, ref, {}, backend=backend)
    loss_s, stats_s, grad_s = _run(logits, strided, old, advantages, weights, ref, {}, backend=backend)
    assert torch.equal(loss_s, loss) and torch.equal(grad_s, grad)
    assert all(torch.equal(stats_s[name], stats[name]) for name in stats)
