"""Model building: the tiny Qwen2 shape, seeded initialisation, attention choices, save/load."""

import pytest
import torch

from lrm_fast.config import TinyModelConfig
from lrm_fast.model.causal_lm import build_model, check_attn_implementation, load_model, tiny_qwen2_config

VOCAB = 28


def test_default_shape_and_parameter_count():
    config = tiny_qwen2_config(VOCAB)
    assert config.hidden_size // config.num_attention_heads == 32
    assert config.tie_word_embeddings
    model = build_model(config)
    # Per layer: q, k, v 3*(128*128 + 128) + o 128*128 = 65_920; MLP 3*128*512 = 196_608;
    # two RMSNorms 256; so 262_784 per layer, 788_352 for 3. Embedding (tied) 28*128 = 3_584,
    # final norm 128: 792_064 in all.
    assert sum(p.numel() for p in model.parameters()) == 792_064
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.model.layers[0].self_attn.head_dim == 32


def test_head_dim_below_32_is_refused():
    with pytest.raises(ValueError, match="head_dim"):
        tiny_qwen2_config(VOCAB, TinyModelConfig(hidden_size=128, num_heads=8))
    with pytest.raises(ValueError, match="multiple"):
        tiny_qwen2_config(VOCAB, TinyModelConfig(hidden_size=100, num_heads=3))


def test_same_seed_same_weights_and_global_rng_untouched():
    config = tiny_qwen2_config(VOCAB)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_model(config, seed=0)
    assert torch.equal(torch.rand(3), expected_next)
    b = build_model(config, seed=0)
    c = build_model(config, seed=1)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_sdpa_and_eager_agree():
    config = tiny_qwen2_config(VOCAB, pad_token_id=0)
    ids = torch.randint(1, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    logits = {}
    for attn in ("sdpa", "eager"):
        model = build_model(config, attn_implementation=attn).eval()
        assert model.config._attn_implementation == attn
        with torch.no_grad():
            logits[attn] = model(input_ids=ids, attention_mask=mask).logits
    assert logits["sdpa"].shape == (2, 9, VOCAB)
    torch.testing.assert_close(logits["sdpa"][:, 3:], logits["eager"][:, 3:], rtol=1e-5, atol=1e-5)


def test_attention_choices():
    with pytest.raises(ValueError, match="one of"):
        check_attn_implementation("flex")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="flash"):
            build_model(tiny_qwen2_config(VOCAB), attn_implementation="flash_attention_2")


def test_save_and_load_round_trip(tmp_path):
    model = build_model(tiny_qwen2_config(VOCAB, pad_token_id=0, eos_token_id=2), seed=5).eval()
    model.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.dtype == torch.float32
    assert loaded.config._attn_implementation == "sdpa"
    assert loaded.generation_config.eos_token_id == 2
    ids = torch.arange(1, 11).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    assert load_model(str(tmp_path), dtype=torch.bfloat16).dtype == torch.bfloat16


def test_missing_model_is_not_downloaded():
    with pytest.raises(OSError, match="never downloads"):
        load_model("lrm-fast-tests/no-such-model")
