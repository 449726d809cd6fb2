"""Attention within packed sequences: every sequence of a packed row attends to itself only.

A packed micro-batch (lrm_fast/batching/micro_batches.py) holds S sequences end to end in one row
[1, T] with their boundaries in cu_seqlens [S + 1]. Three implementations keep attention inside each
sequence, chosen by `loss.packed_attention`:

    sdpa    torch SDPA, causal, on each sequence in turn (anywhere; memory O(T))
    varlen  torch.nn.attention.varlen.varlen_attn on cu_seqlens (CUDA)
    flash   flash_attn.flash_attn_varlen_func on cu_seqlens (CUDA, flash-attn installed)

They are registered with transformers' AttentionInterface under their own names, with a mask
function that returns None (transformers would otherwise build a dense [T, T] mask the varlen kernels
do not read). The model's attention implementation is switched only around the update's forward
and backward (`packed_attention`): sampling keeps its own (sdpa with the KV cache).
"""

import functools
import importlib.util
import inspect
import itertools
from contextlib import contextmanager

import torch
from transformers import AttentionInterface, PretrainedConfig
from transformers.masking_utils import AttentionMaskInterface

from lrm_fast.config.choices import PackedAttention


# Each function gets transformers' attention arguments: query [1, H, T, D], key and value [1, H_kv, T, D]
# (H_kv < H with grouped-query attention), and returns ([1, T, H, D], None).
def sdpa_packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Causal SDPA on each packed sequence in turn: token t of sequence i attends to tokens <= t of i only.

    One call per sequence rather than one over a block-diagonal causal [T, T] mask: no [T, T] tensor and work
    O(sum of squared lengths), where the mask costs O(T^2) of both (at 16k packed tokens, 256 MB of mask per
    layer and every masked block computed). Memory is O(T) with SDPA's fused kernels; its math fallback
    (attention dropout) holds each sequence's L_i^2 weights. The loop and the host read of cu_seqlens cost
    a call per sequence and a sync per layer: small on CPU, where this is the path; on CUDA varlen and flash
    are the default."""
    _check_packed(query, kwargs)
    bounds = kwargs["cu_seq_lens_q"].tolist()
    gqa = key.shape[1] != query.shape[1]
    outputs = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
            enable_gqa=gqa,
        )
        for start, end in itertools.pairwise(bounds)
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2), None


def varlen_packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """torch's varlen flash attention on the packed sequences (CUDA)."""
    _check_packed(query, kwargs)
    if dropout:
        raise ValueError("loss.packed_attention=varlen has no attention dropout; use sdpa or flash")
    varlen_attn, parameters = _torch_varlen()
    # torch 2.13 spells causal as window_size=(-1, 0); earlier releases took is_causal=True.
    options = {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    if "scale" in parameters:
        options["scale"] = scaling
    elif scaling is not None and abs(scaling - query.shape[-1] ** -0.5) > 1e-12:
        raise ValueError(f"torch {torch.__version__}'s varlen_attn takes no scale; use flash or sdpa")
    q, k, v, dtype = _tokens_major(query, key, value)
    if key.shape[1] != query.shape[1]:  # grouped-query attention
        if "enable_gqa" in parameters:
            options["enable_gqa"] = True
        else:
            k, v = (x.repeat_interleave(query.shape[1] // key.shape[1], dim=1) for x in (k, v))
    cu_seqlens, max_seqlen = kwargs["cu_seq_lens_q"], kwargs["max_length_q"]
    output = varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **options)
    return output.to(dtype).unsqueeze(0), None


def flash_packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """flash-attn's varlen kernel on the packed sequences (CUDA; takes fewer key/value heads as they are)."""
    _check_packed(query, kwargs)
    from flash_attn import flash_attn_varlen_func

    q, k, v, dtype = _tokens_major(query, key, value)
    cu_seqlens, max_seqlen = kwargs["cu_seq_lens_q"], kwargs["max_length_q"]
    output = flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens,
        cu_seqlens,
        max_seqlen,
        max_seqlen,
        dropout_p=dropout,
        softmax_scale=scaling,
        causal=True,
    )
    return output.to(dtype).unsqueeze(0), None


def _check_packed(query, kwargs) -> None:
    if kwargs.get("cu_seq_lens_q") is None or query.shape[0] != 1:
        raise ValueError(
            "packed attention needs one packed row and cu_seq_lens_q (batching.micro_batches.model_inputs)"
        )
    if kwargs.get("sliding_window") is not None:
        raise ValueError("packed attention does not implement sliding-window layers")


def _tokens_major(query, key, value):
    """[1, H, T, D] -> [T, H, D] in a half dtype (flash kernels have no fp32), and the dtype to return.

    Under autocast the rotary embedding can leave query and key in fp32 while value is bf16."""
    dtype = query.dtype
    half = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else value.dtype
    half = half if half in (torch.float16, torch.bfloat16) else torch.bfloat16
    return *(x[0].transpose(0, 1).to(half) for x in (query, key, value)), dtype


@functools.cache
def _torch_varlen():
    """varlen_attn and the names of its parameters, which changed between torch releases."""
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def _no_mask(*args, **kwargs) -> None:
    # The packed attentions build what they need from cu_seqlens: no dense [T, T] mask from transformers.
    return None


IMPLEMENTATIONS = {
    PackedAttention.sdpa: ("lrm_fast_packed_sdpa", sdpa_packed_attention),
    PackedAttention.varlen: ("lrm_fast_packed_varlen", varlen_packed_attention),
    PackedAttention.flash: ("lrm_fast_packed_flash", flash_packed_attention),
}
for _key, _function in IMPLEMENTATIONS.values():
    AttentionInterface.register(_key, _function)
    AttentionMaskInterface.register(_key, _no_mask)


# ------------------------------------------------------------------------------------ switching
@functools.cache
def _flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _torch_varlen_available() -> bool:
    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def resolve_attention(choice: PackedAttention, device: torch.device) -> PackedAttention:
    """The attention (sdpa, varlen or flash) that `loss.packed_attention` means on `device`.

    auto takes the fastest available there; an explicit choice that cannot run raises ValueError."""
    choice = PackedAttention(choice)
    cuda = device.type == "cuda"
    if choice == PackedAttention.auto:
        if cuda and _flash_attn_installed():
            return PackedAttention.flash
        return PackedAttention.varlen if cuda and _torch_varlen_available() else PackedAttention.sdpa
    if choice != PackedAttention.sdpa and not cuda:
        raise ValueError(f"loss.packed_attention={choice} needs a CUDA device; use sdpa or auto on {device}")
    if choice == PackedAttention.flash and not _flash_attn_installed():
        raise ValueError("loss.packed_attention=flash needs the flash-attn package (extra: flash-attn)")
    if choice == PackedAttention.varlen and not _torch_varlen_available():
        message = f"loss.packed_attention=varlen needs torch.nn.attention.varlen (torch {torch.__version__})"
        raise ValueError(message)
    return choice


def packed_attention(model, choice: PackedAttention, device: torch.device):
    """Context in which `model` attends within packed sequences (hold it over a packed micro-batch's
    forward and backward: activation checkpointing re-runs the forward there)."""
    name, _ = IMPLEMENTATIONS[resolve_attention(choice, device)]
    return attention_implementation(model, name)


@contextmanager
def attention_implementation(model, name: str):
    """Set `config._attn_implementation` of `model` and of every submodule's config to `name`, then restore.

    Each attention layer reads it from its config on every call (one shared config object in a stock
    model, but sub-models and copies can hold their own)."""
    configs = {id(m.config): m.config for m in model.modules() if _has_config(m)}
    previous = {key: config._attn_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._attn_implementation = name
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = previous[key]


def _has_config(module) -> bool:
    return isinstance(getattr(module, "config", None), PretrainedConfig)
