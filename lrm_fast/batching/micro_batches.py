"""Packed (varlen) micro-batches: every sequence of a micro-batch in one row, no padding.

A padded micro-batch [b, L] spends b * L tokens of compute on sum_i L_i real ones; with response
lengths that vary by 10x (long reasoning traces) most of it is padding. Packing puts the S sequences
of a micro-batch end to end in one row [1, T], T = sum_i L_i, with position_ids restarting at 0 for
every sequence (so rotary embeddings see each sequence as if it were alone) and the boundaries in
cu_seqlens [S + 1] (int32, cu_seqlens[i] = start of sequence i). Attention must then stay inside each
sequence; three implementations do that, chosen by `loss.packed_attention`:

    sdpa    torch SDPA with a block-diagonal causal [T, T] mask (anywhere; memory O(T^2) per layer)
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
from contextlib import contextmanager, nullcontext

import torch
from transformers import AttentionInterface, PretrainedConfig
from transformers.masking_utils import AttentionMaskInterface

from lrm_fast.batch import MicroBatch, Sample

PACKED_ATTENTIONS = ("auto", "sdpa", "varlen", "flash")


# ------------------------------------------------------------------------------------ layout
def packed_micro_batches(samples: list[Sample], token_budget: int) -> list[list[Sample]]:
    """Greedy packing of the forwarded samples, in order, into micro-batches of at most `token_budget`
    real tokens (sum of prompt + response lengths: nothing is padded); a longer sample goes alone."""
    batches, current, tokens = [], [], 0
    for s in (s for s in samples if s.forward and s.response_ids):
        if current and tokens + s.num_tokens > token_budget:
            batches.append(current)
            current, tokens = [], 0
        current.append(s)
        tokens += s.num_tokens
    if current:
        batches.append(current)
    return batches


def collate_packed(samples: list[Sample]) -> MicroBatch:
    """One row [1, T] holding every sample, and the kernels' layout of its response tokens (row 0)."""
    ids, position_ids, lengths = [], [], []
    positions, targets, advantages, weights, injected = [], [], [], [], []
    for s in samples:
        start = len(ids) + len(s.prompt_ids) - 1  # logits at packed index p predict token p + 1
        ids += s.prompt_ids + s.response_ids
        position_ids += range(s.num_tokens)
        lengths.append(s.num_tokens)
        positions += range(start, start + len(s.response_ids))
        targets += s.response_ids
        advantages += [s.advantage] * len(s.response_ids)
        weights += [s.weight] * len(s.response_ids)
        injected += [s.injected] * len(s.response_ids)
    cu_seqlens = torch.zeros(len(samples) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.tensor(lengths).cumsum(0)
    return MicroBatch(
        input_ids=torch.tensor([ids]),
        attention_mask=None,
        row=torch.zeros(len(positions), dtype=torch.long),
        position=torch.tensor(positions, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        advantages=torch.tensor(advantages, dtype=torch.float32),
        weights=torch.tensor(weights, dtype=torch.float32),
        injected=torch.tensor(injected, dtype=torch.bool),
        position_ids=torch.tensor([position_ids]),
        cu_seqlens=cu_seqlens,
        max_seqlen=max(lengths),
    )


def model_inputs(batch: MicroBatch) -> dict:
    """Keyword arguments of the model's forward: the padding mask, or the packed positions and
    boundaries (transformers passes the cu_seq_lens / max_length keywords down to the attention)."""
    if not batch.packed:
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    return {
        "input_ids": batch.input_ids,
        "position_ids": batch.position_ids,
        "cu_seq_lens_q": batch.cu_seqlens,
        "cu_seq_lens_k": batch.cu_seqlens,
        "max_length_q": batch.max_seqlen,
        "max_length_k": batch.max_seqlen,
    }


# ------------------------------------------------------------------------------------ attention
# Each function gets transformers' attention arguments: query [1, H, T, D], key and value [1, H_kv, T, D]
# (H_kv < H with grouped-query attention), and returns ([1, T, H, D], None).
def sdpa_packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Block-diagonal causal SDPA: token t of sequence i attends to tokens <= t of sequence i only."""
    _check_packed(query, kwargs)
    # Rebuilt in every layer from cu_seqlens: O(T^2) like the attention itself, and nothing to cache.
    cu_seqlens = kwargs["cu_seq_lens_q"]
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    sequence = torch.repeat_interleave(torch.arange(len(lengths), device=query.device), lengths)  # [T]
    causal = torch.ones(len(sequence), len(sequence), dtype=torch.bool, device=query.device).tril()
    mask = causal & (sequence[:, None] == sequence[None, :])  # [T, T]
    output = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=mask,
        dropout_p=dropout,
        scale=scaling,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return output.transpose(1, 2), None


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
        raise ValueError("packed attention needs one packed row and cu_seq_lens_q (see packing.model_inputs)")
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
    "sdpa": ("lrm_fast_packed_sdpa", sdpa_packed_attention),
    "varlen": ("lrm_fast_packed_varlen", varlen_packed_attention),
    "flash": ("lrm_fast_packed_flash", flash_packed_attention),
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


def resolve_attention(choice: str, device: torch.device) -> str:
    """The attention ("sdpa", "varlen" or "flash") that `loss.packed_attention` means on `device`.

    "auto" takes the fastest available there; an explicit choice that cannot run raises ValueError."""
    if choice not in PACKED_ATTENTIONS:
        raise ValueError(f"loss.packed_attention must be one of {list(PACKED_ATTENTIONS)}, got {choice!r}")
    cuda = device.type == "cuda"
    if choice == "auto":
        if cuda and _flash_attn_installed():
            return "flash"
        return "varlen" if cuda and _torch_varlen_available() else "sdpa"
    if choice != "sdpa" and not cuda:
        raise ValueError(f"loss.packed_attention={choice} needs a CUDA device; use sdpa or auto on {device}")
    if choice == "flash" and not _flash_attn_installed():
        raise ValueError("loss.packed_attention=flash needs the flash-attn package (extra: flash-attn)")
    if choice == "varlen" and not _torch_varlen_available():
        message = f"loss.packed_attention=varlen needs torch.nn.attention.varlen (torch {torch.__version__})"
        raise ValueError(message)
    return choice


def packed_attention(model, batch: MicroBatch, choice: str):
    """Context in which `model` attends within the packed sequences of `batch` (nothing for a padded batch).

    Hold it over the backward pass too: activation checkpointing re-runs the forward there."""
    if not batch.packed:
        return nullcontext()
    name, _ = IMPLEMENTATIONS[resolve_attention(choice, batch.input_ids.device)]
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
