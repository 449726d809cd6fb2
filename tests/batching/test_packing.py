"""Packed micro-batches: the padded path's loss and gradients, and no attention across sequences."""

import importlib.util
import inspect
import itertools
import os
import subprocess
import sys
import types
from dataclasses import replace

import pytest
import torch
from trainer_fixtures import QUICK, VOCAB, flat_grad, synthetic_samples, tiny_model

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import LossConfig, TinyModelConfig
from lrm_fast.model import attention as P
from lrm_fast.model.causal_lm import build_model, enable_activation_checkpointing, tiny_qwen2_config
from lrm_fast.training.metrics import read_metrics
from lrm_fast.training.update import micro_batch_loss, policy_update

pytestmark = pytest.mark.usefixtures("one_thread")

LOSS = LossConfig(kl_coef=0.01, entropy_coef=0.01, backend="torch", packed_attention="sdpa")


def _model(kind: str, seed: int = 0):
    if kind == "mha":
        return tiny_model(seed)
    # Grouped-query attention: 4 query heads share 2 key/value heads (head_dim 32, as in the tiny model).
    shape = TinyModelConfig(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=128)
    config = tiny_qwen2_config(VOCAB, shape, num_kv_heads=2)
    return build_model(config, seed=seed)


def _weighted_samples():
    samples = synthetic_samples(num_groups=4, group_size=4)
    B.assign_advantages(samples, 4, "std")
    B.assign_weights(samples, "token_mean", B.local_normalisers(samples), sum_norm_length=10)
    return samples


def _loss_and_grad(model, ref_model, batches, loss_cfg):
    model.zero_grad(set_to_none=True)
    total = 0.0
    for batch in batches:
        loss, _ = micro_batch_loss(model, ref_model, batch, loss_cfg, temperature=0.9)
        loss.backward()
        total += loss.item()
    return total, flat_grad(model)


def _packed_logits(model, batch, attention="sdpa") -> list[torch.Tensor]:
    """Logits of every position of the packed row, split into its sequences."""
    with P.packed_attention(model, attention, batch.input_ids.device):
        logits = model(**M.model_inputs(batch), use_cache=False).logits[0]
    bounds = batch.cu_seqlens.tolist()
    return [logits[start:end] for start, end in itertools.pairwise(bounds)]


@pytest.mark.parametrize("fused_head", [False, True], ids=["logits", "fused_head"])
@pytest.mark.parametrize("kind", ["mha", "gqa"])
def test_packed_loss_and_gradients_match_the_padded_path(kind, fused_head):
    model, ref_model = _model(kind), _model(kind, seed=1).requires_grad_(False)  # ref: the KL term
    samples = _weighted_samples()
    padded = [M.collate(mb, False) for mb in M.micro_batches(samples, 60, False)]
    packed = [M.collate(mb, True) for mb in M.micro_batches(samples, 60, True)]
    assert len(packed) < len(padded)  # same budget, no padding: fewer micro-batches
    loss_cfg = replace(LOSS, fused_head=fused_head)
    loss_padded, grad_padded = _loss_and_grad(model, ref_model, padded, loss_cfg)
    loss_packed, grad_packed = _loss_and_grad(model, ref_model, packed, loss_cfg)
    assert loss_packed == pytest.approx(loss_padded, rel=1e-5, abs=1e-7)
    torch.testing.assert_close(grad_packed, grad_padded, rtol=1e-5, atol=1e-6)
    # Switched for the update only: sampling keeps the model's own attention.
    assert model.config._attn_implementation == ref_model.config._attn_implementation == "sdpa"


def test_policy_update_with_activation_checkpointing_recomputes_the_packed_attention():
    """Backward re-runs each block's forward: it must see the packed attention too (policy_update holds
    it over the backward), or the recomputation attends across sequences."""
    samples, ref_model = _weighted_samples(), tiny_model(seed=1).requires_grad_(False)
    grads = {}
    for packed in (False, True):
        model = tiny_model()
        enable_activation_checkpointing(model)
        if packed:
            batches = [M.collate(mb, True) for mb in M.micro_batches(samples, 60, True)]
        else:
            batches = [M.collate(mb, False) for mb in M.micro_batches(samples, 60, False)]
        frozen = torch.optim.SGD(model.parameters(), lr=0.0)  # keeps the gradients for the comparison
        policy_update(model, ref_model, frozen, batches, LOSS, temperature=0.9, grad_clip=1e9)
        grads[packed] = flat_grad(model)
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["mha", "gqa"])
def test_each_packed_sequence_attends_only_to_itself(kind):
    model = _model(kind)
    samples = [B.Sample([5, 6, 7], [8, 9, 10, 11], 0.0, False), B.Sample([12], [13, 14], 0.0, False)]
    samples.append(B.Sample([15, 16, 17, 18], [19, 20, 21, 22, 23], 0.0, False))
    packed = _packed_logits(model, M.collate(samples, True))
    for s, logits in zip(samples, packed, strict=True):
        alone = model(input_ids=torch.tensor([s.prompt_ids + s.response_ids]), use_cache=False).logits[0]
        torch.testing.assert_close(logits, alone, rtol=1e-5, atol=1e-5)
    # Other tokens in the first sequence change nothing in the others.
    samples[0] = B.Sample([30, 31, 32], [33, 34, 35, 36], 0.0, False)
    changed = _packed_logits(model, M.collate(samples, True))
    assert not torch.allclose(changed[0], packed[0])
    for before, after in zip(packed[1:], changed[1:], strict=True):
        torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)


def test_transformers_builds_no_dense_mask_for_the_packed_attentions(monkeypatch):
    masks = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        masks.append(attention_mask)
        return P.sdpa_packed_attention(module, query, key, value, attention_mask, **kwargs)

    name, _ = P.IMPLEMENTATIONS["sdpa"]
    monkeypatch.setitem(P.AttentionInterface._global_mapping, name, spy)
    model = tiny_model()
    _packed_logits(model, M.collate(synthetic_samples(num_groups=1, group_size=3), True))
    assert len(masks) == model.config.num_hidden_layers and all(m is None for m in masks)


def test_attention_implementation_is_restored_after_an_error():
    model = tiny_model()
    with pytest.raises(RuntimeError, match="inside"), P.attention_implementation(model, "eager"):
        assert model.model.layers[0].self_attn.config._attn_implementation == "eager"
        raise RuntimeError("inside")
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("token_budget", [1, 20, 45, 10_000], ids=lambda t: f"budget{t}")
def test_packing_respects_the_token_budget_and_forwards_each_sample_once(token_budget):
    samples = synthetic_samples(num_groups=5, group_size=4)
    samples[3].forward = samples[10].forward = False
    normalisers = B.local_normalisers(samples)
    batches = M.weighted_micro_batches(samples, "token_mean", normalisers, 10, token_budget, True)
    for mb in batches:
        assert len(mb) == 1 or sum(s.num_tokens for s in mb) <= token_budget
    packed = [s for mb in batches for s in mb]
    forwarded = [s for s in samples if s.forward]
    assert len(packed) == len(forwarded) and all(a is b for a, b in zip(packed, forwarded, strict=True))
    if token_budget == 1:  # every sample is longer than the budget: each goes alone
        assert all(len(mb) == 1 for mb in batches)
    # Greedy in order: the next micro-batch's first sample would not have fit in the previous one.
    for previous, following in itertools.pairwise(batches):
        assert sum(s.num_tokens for s in previous) + following[0].num_tokens > token_budget


def test_packed_layout_points_at_the_logits_that_predict_each_response_token():
    samples = [B.Sample([5, 6, 7], [8, 9], 1.0, True, advantage=0.5, weight=0.25)]
    samples.append(B.Sample([10], [11, 12, 13], 0.0, False, advantage=-0.5, weight=0.125, injected=True))
    mb = M.collate(samples, True)
    assert mb.packed and mb.attention_mask is None
    assert mb.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3]]
    assert mb.cu_seqlens.dtype == torch.int32 and mb.cu_seqlens.tolist() == [0, 5, 9]
    assert mb.max_seqlen == 5
    assert mb.row.tolist() == [0] * 5
    assert mb.position.tolist() == [2, 3, 5, 6, 7]  # packed index 5 (token 10) predicts token 11
    assert torch.equal(mb.input_ids[mb.row, mb.position + 1], mb.targets)
    assert mb.advantages.tolist() == [0.5, 0.5, -0.5, -0.5, -0.5]
    assert mb.weights.tolist() == [0.25, 0.25, 0.125, 0.125, 0.125]
    assert mb.injected.tolist() == [False, False, True, True, True]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
@pytest.mark.parametrize("choice", ["varlen", "flash"])
def test_gpu_attentions_are_refused_on_cpu_and_auto_picks_sdpa(choice):
    cpu = torch.device("cpu")
    assert P.resolve_attention("auto", cpu) == "sdpa"
    with pytest.raises(ValueError, match=f"loss.packed_attention={choice} needs a CUDA device"):
        P.resolve_attention(choice, cpu)


def _per_sequence_attention(q, k, v, cu_seqlens, scale):
    """Causal attention of each packed sequence alone, in fp32: [T, H, D] -> [T, H, D]."""
    out = []
    for start, end in itertools.pairwise(cu_seqlens.tolist()):
        qs, ks, vs = (x[start:end].transpose(0, 1).float() for x in (q, k, v))  # [H, L, D]
        o = torch.nn.functional.scaled_dot_product_attention(
            qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True
        )
        out.append(o.transpose(0, 1))
    return torch.cat(out).to(q.dtype)


def varlen_attn_2_13(
    q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False
):
    assert window_size == (-1, 0) and enable_gqa == (k.shape[1] != q.shape[1])  # causal; GQA in the kernel
    assert q.dtype == k.dtype == v.dtype == torch.bfloat16 and max_q == max_k == int(cu_q.diff().max())
    return _per_sequence_attention(q, k, v, cu_q, scale)


def varlen_attn_older(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False):
    assert is_causal and k.shape[1] == q.shape[1]  # no GQA in the kernel: key and value repeated
    return _per_sequence_attention(q, k, v, cu_q, None)


def flash_attn_varlen_func(
    q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False
):
    assert causal and dropout_p == 0.0
    return _per_sequence_attention(q, k, v, cu_q, softmax_scale)


@pytest.mark.parametrize(
    "attention",
    [("varlen", varlen_attn_2_13), ("varlen", varlen_attn_older), ("flash", flash_attn_varlen_func)],
    ids=["varlen_torch_2_13", "varlen_older_torch", "flash"],
)
@pytest.mark.parametrize("kind", ["mha", "gqa"])
def test_varlen_glue_on_cpu_with_stand_in_kernels(monkeypatch, kind, attention):
    """The CPU twin of the GPU test below: layouts, dtypes, GQA and options handed to each kernel (here a
    per-sequence SDPA stand-in). The kernels see bf16 q, k, v, hence the bf16 tolerance; attending across
    sequences would move the logits by ~0.5."""
    name, kernel = attention
    if name == "varlen":
        monkeypatch.setattr(
            P, "_torch_varlen", lambda: (kernel, frozenset(inspect.signature(kernel).parameters))
        )
    else:
        monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=kernel))
    model, batch = _model(kind), M.collate(synthetic_samples(num_groups=2, group_size=3), True)
    expected = _packed_logits(model, batch, "sdpa")
    with P.attention_implementation(model, P.IMPLEMENTATIONS[name][0]):
        logits = model(**M.model_inputs(batch), use_cache=False).logits[0]
    torch.testing.assert_close(logits, torch.cat(expected), rtol=0, atol=5e-3)  # measured: 2e-3


FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None
TORCH_VARLEN = importlib.util.find_spec("torch.nn.attention.varlen") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "attention",
    [
        pytest.param("varlen", marks=pytest.mark.skipif(not TORCH_VARLEN, reason="torch has no varlen_attn")),
        pytest.param("flash", marks=pytest.mark.skipif(not FLASH_ATTN, reason="flash-attn is not installed")),
    ],
)
@pytest.mark.parametrize("kind", ["mha", "gqa"])
def test_cuda_varlen_attentions_match_the_sdpa_path(kind, attention):
    """The GPU twin of the CPU tests: bf16 logits and gradients of `attention` against the sdpa packed
    path, each no further from the fp32 sdpa result than 2x bf16 sdpa's own error. (Attending across
    sequences moves them ~100x that error: measured with a leaky mask on CPU.)"""
    samples = synthetic_samples(num_groups=4, group_size=4)
    batch = M.collate(samples, True)
    batch = replace(
        batch, **{k: getattr(batch, k).cuda() for k in ("input_ids", "position_ids", "cu_seqlens")}
    )
    probe = torch.randn(batch.input_ids.shape[1], VOCAB, generator=torch.Generator().manual_seed(0)).cuda()

    def logits_and_grad(dtype, implementation):
        model = _model(kind).to("cuda", dtype)
        logits = torch.cat(_packed_logits(model, batch, implementation)).float()
        (logits * probe).sum().backward()
        return logits.detach(), flat_grad(model).float()

    oracle = logits_and_grad(torch.float32, "sdpa")
    sdpa = logits_and_grad(torch.bfloat16, "sdpa")
    ours = logits_and_grad(torch.bfloat16, attention)
    for name, ours_i, sdpa_i, oracle_i in zip(("logits", "grad"), ours, sdpa, oracle, strict=True):
        sdpa_error = (sdpa_i - oracle_i).abs().max().item()
        assert (ours_i - oracle_i).abs().max().item() <= 2 * sdpa_error + 1e-6, name


@pytest.mark.slow
def test_packed_training_run_matches_the_padded_run(tmp_path):
    """lrm-fast-train with loss.packing=true: the same losses and gradient norms as padded micro-batches."""
    env = {**os.environ, "LRM_FAST_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    quick = [*QUICK, "trainer.steps=2"]
    rows = {}
    for packing in ("false", "true"):
        run = tmp_path / f"packing_{packing}"
        command = [sys.executable, "-m", "lrm_fast.cli.train", *quick, f"loss.packing={packing}"]
        command.append(f"hydra.run.dir={run}")
        result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        rows[packing] = [r for r in read_metrics(run) if "loss/policy" in r]
    assert [r["step"] for r in rows["true"]] == [1, 2]
    for padded, packed in zip(rows["false"], rows["true"], strict=True):
        for key in ("loss/policy", "optim/grad_norm", "loss/kept_tokens"):
            assert packed[key] == pytest.approx(padded[key], rel=1e-4, abs=1e-6), key
