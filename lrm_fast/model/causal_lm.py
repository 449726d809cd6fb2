"""Model building: the embedded tiny Qwen2 and real checkpoints from a local path or the HF cache.

The tiny default (hidden 128, 3 layers, 4 heads of 32, MLP 512, tied embeddings) has about 0.79M
parameters with the 28-token arithmetic vocabulary. It is a stock `Qwen2ForCausalLM`, so the
trainer, vLLM and FSDP treat it exactly like Qwen2.5 or R1-Distill-Qwen.

Nothing here downloads: `load_model` passes ``local_files_only=True``, and ``flash_attention_2`` is
refused unless `flash_attn` is importable and CUDA is available (transformers would otherwise fall
back to fetching a kernel from the Hub).
"""

import importlib.util

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, Qwen2Config

from lrm_fast.config import TinyModelConfig
from lrm_fast.config.choices import AttnImplementation

MIN_HEAD_DIM = 32
"""vLLM's CPU attention backend needs head_dim >= 32 (DESIGN.md, vLLM on CPU)."""


def tiny_qwen2_config(
    vocab_size: int,
    shape: TinyModelConfig | None = None,
    *,
    num_kv_heads: int | None = None,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> Qwen2Config:
    """A small Qwen2 configuration of `shape` (default: the embedded model's); head_dim is
    hidden_size / num_heads and must be >= 32.

    Qwen2Config has no head_dim field (the attention derives it), so it is set through the
    head count; `num_kv_heads` defaults to `num_heads` (no grouped-query attention at this size).
    """
    shape = shape or TinyModelConfig()
    hidden_size, num_heads = shape.hidden_size, shape.num_heads
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    head_dim = hidden_size // num_heads
    if head_dim < MIN_HEAD_DIM:
        raise ValueError(f"head_dim = {hidden_size} / {num_heads} = {head_dim} < {MIN_HEAD_DIM}")
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=shape.max_position_embeddings,
        # Tied: with a 28-token vocabulary a separate head would add little but a second copy.
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
    )


def check_attn_implementation(attn_implementation: str) -> None:
    """Raise `ValueError` for an unknown name, or flash-attention where it cannot run."""
    choices = [choice.value for choice in AttnImplementation]
    if attn_implementation not in choices:
        raise ValueError(f"attn_implementation must be one of {choices}, got {attn_implementation!r}")
    if attn_implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise ValueError(
                "attn_implementation='flash_attention_2' needs the flash-attn package (extra: flash-attn)"
            )
        if not torch.cuda.is_available():
            raise ValueError("attn_implementation='flash_attention_2' needs a CUDA device; use 'sdpa' on CPU")


def build_model(config: Qwen2Config, *, attn_implementation: str = "sdpa", seed: int = 0) -> PreTrainedModel:
    """A freshly initialised fp32 model; the same seed gives the same weights.

    The global torch RNG is left as it was, so building a model does not shift later sampling.
    """
    check_attn_implementation(attn_implementation)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(
            config, attn_implementation=attn_implementation, dtype=torch.float32
        )
    return model


def load_model(
    path_or_name: str, *, dtype: torch.dtype | str = torch.float32, attn_implementation: str = "sdpa"
) -> PreTrainedModel:
    """A causal LM from a local directory or the HF cache (never downloads).

    `dtype` defaults to fp32, the safe choice for CPU training; pass "auto" for the checkpoint's own.
    """
    check_attn_implementation(attn_implementation)
    try:
        return AutoModelForCausalLM.from_pretrained(
            path_or_name, dtype=dtype, attn_implementation=attn_implementation, local_files_only=True
        )
    except OSError as error:
        raise OSError(
            f"{path_or_name!r} is neither a local model directory nor in the HF cache, and lrm_fast never "
            f"downloads: fetch it first (e.g. `hf download {path_or_name}`) or pass a local path"
        ) from error


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer's activations in the backward (non-reentrant checkpoints).

    transformers 5.25 renamed gradient_checkpointing_enable to activation_checkpointing_enable and drops
    the old name in v6; earlier releases (vLLM pins one) have only the old name."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
