"""Tests for the transformers rollout backend on a tiny random Qwen2 model.

The key property: the sampler's log-probs equal what the trainer recomputes from one forward pass
over prompt + response (old_logp), token for token.
"""

import inspect
import warnings

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from lrm_fast.rollout import Rollout, SamplingParams
from lrm_fast.rollout.hf import HFRolloutBackend

VOCAB = 64
PAD, EOS = 0, 1
# Several stop tokens make ~6% of random-model steps end a response, so one batch holds both
# finished and truncated responses.
STOP_IDS = [EOS, 2, 3, 4]
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15], [16, 17, 18, 19]]  # unequal: padding matters


def make_model(seed=0):
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=128,
        # Wider than the default 0.02 so that the distribution is far from uniform.
        initializer_range=0.2,
    )
    return Qwen2ForCausalLM(config).float()


def make_tokenizer():
    vocab = {"<pad>": PAD, "<eos>": EOS} | {f"t{i}": i for i in range(2, VOCAB)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def backend(model):
    return HFRolloutBackend(model, make_tokenizer(), eos_token_ids=STOP_IDS)


def recomputed_logprobs(model, rollout, temperature, top_p=1.0):
    """The trainer's view: one unpadded forward over prompt + response, logits / T, optional top-p."""
    ids = torch.tensor([rollout.prompt_ids + rollout.response_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float()  # [L, V]
    start = len(rollout.prompt_ids) - 1  # logits at position t predict token t + 1
    scores = logits[start : start + len(rollout.response_ids)] / temperature  # [T, V]
    if top_p < 1.0:
        scores = top_p_filter(scores, top_p)
    targets = torch.tensor(rollout.response_ids)
    return torch.log_softmax(scores, dim=-1).gather(1, targets[:, None]).squeeze(1)


def top_p_filter(scores, top_p):
    """Keep the most probable tokens until their mass reaches top_p (at least one token)."""
    probs = scores.softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more probable tokens
    keep_sorted = mass_before < top_p
    keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
    return scores.masked_fill(~keep, float("-inf"))


def check_shapes(rollouts, prompts, group_size, max_new_tokens):
    assert len(rollouts) == len(prompts) * group_size
    for i, rollout in enumerate(rollouts):
        assert isinstance(rollout, Rollout)
        assert rollout.prompt_ids == prompts[i // group_size]  # groups consecutive, padding removed
        assert len(rollout.logprobs) == len(rollout.response_ids) >= 1
        assert len(rollout.response_ids) <= max_new_tokens


# ---------------------------------------------------------------------------------- log-prob parity


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_logprobs_match_trainer_recomputation(model, backend, temperature):
    params = SamplingParams(max_new_tokens=12, temperature=temperature, seed=0)
    rollouts = backend.generate(PROMPTS, group_size=3, params=params)
    check_shapes(rollouts, PROMPTS, 3, 12)
    for rollout in rollouts:
        expected = recomputed_logprobs(model, rollout, temperature)
        torch.testing.assert_close(torch.tensor(rollout.logprobs), expected, rtol=0, atol=1e-5)


def test_top_p_logprobs_are_of_the_truncated_distribution(model, backend):
    params = SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.7, seed=1)
    rollouts = backend.generate(PROMPTS, group_size=3, params=params)
    for rollout in rollouts:
        expected = recomputed_logprobs(model, rollout, 0.8, top_p=0.7)
        assert torch.isfinite(expected).all()  # every sampled token lies inside the nucleus
        torch.testing.assert_close(torch.tensor(rollout.logprobs), expected, rtol=0, atol=1e-5)
    # Renormalised over the nucleus, a token is at least as likely as under the full distribution,
    # and strictly more likely wherever the nucleus dropped some mass.
    sampled = torch.cat([torch.tensor(r.logprobs) for r in rollouts])
    full = torch.cat([recomputed_logprobs(model, r, 0.8) for r in rollouts])
    assert (sampled >= full - 1e-6).all()
    assert (sampled > full + 1e-3).any()


def test_checkpoint_sampling_defaults_are_overridden(model, backend):
    # Real checkpoints ship sampling defaults; they must not change what is sampled from.
    config = model.generation_config
    config.top_k, config.repetition_penalty, config.temperature = 2, 3.0, 0.1
    try:
        rollouts = backend.generate(PROMPTS, group_size=2, params=SamplingParams(max_new_tokens=8, seed=5))
    finally:
        config.top_k, config.repetition_penalty, config.temperature = None, None, None
    for rollout in rollouts:
        torch.testing.assert_close(
            torch.tensor(rollout.logprobs), recomputed_logprobs(model, rollout, 1.0), rtol=0, atol=1e-5
        )


def test_logprobs_match_when_generated_in_chunks(model):
    chunked = HFRolloutBackend(model, make_tokenizer(), eos_token_ids=STOP_IDS, max_batch_size=5)
    rollouts = chunked.generate(PROMPTS, group_size=3, params=SamplingParams(max_new_tokens=8, seed=2))
    check_shapes(rollouts, PROMPTS, 3, 8)
    for rollout in rollouts:
        torch.testing.assert_close(
            torch.tensor(rollout.logprobs), recomputed_logprobs(model, rollout, 1.0), rtol=0, atol=1e-5
        )


# ------------------------------------------------------------------------------- stopping and padding


def test_responses_stop_at_first_eos_inclusive(backend):
    rollouts = backend.generate(PROMPTS * 4, group_size=2, params=SamplingParams(max_new_tokens=12, seed=3))
    finished = [r for r in rollouts if r.finished]
    truncated = [r for r in rollouts if not r.finished]
    assert finished and truncated  # both cases are exercised
    for rollout in finished:
        assert rollout.response_ids[-1] in STOP_IDS
        assert not set(rollout.response_ids[:-1]) & set(STOP_IDS)  # nothing after the first EOS
    for rollout in truncated:
        assert len(rollout.response_ids) == 12
        assert not set(rollout.response_ids) & set(STOP_IDS)


def test_generation_stops_once_every_row_has_ended(model):
    # Every token is a stop token: all rows end at their first token, so only the prefill runs.
    backend = HFRolloutBackend(model, make_tokenizer(), eos_token_ids=list(range(VOCAB)))
    forward_calls = []
    hook = model.register_forward_hook(lambda *_: forward_calls.append(1))
    try:
        rollouts = backend.generate(PROMPTS, group_size=2, params=SamplingParams(max_new_tokens=50, seed=0))
    finally:
        hook.remove()
    assert len(forward_calls) == 1
    assert all(len(r.response_ids) == 1 and r.finished for r in rollouts)


def test_default_eos_comes_from_tokenizer_and_generation_config(model):
    model.generation_config.eos_token_id = [EOS, 7]
    try:
        backend = HFRolloutBackend(model, make_tokenizer())
    finally:
        model.generation_config.eos_token_id = None
    assert backend.eos_token_ids == [EOS, 7]
    assert backend.pad_token_id == PAD


# ---------------------------------------------------------------------------------------- determinism


def test_seeded_generation_is_deterministic_and_leaves_global_rng_alone(backend):
    params = SamplingParams(max_new_tokens=10, seed=11)
    torch.manual_seed(123)
    first = backend.generate(PROMPTS, group_size=2, params=params)
    global_draw = torch.rand(3)
    torch.manual_seed(123)
    second = backend.generate(PROMPTS, group_size=2, params=params)
    assert first == second
    assert torch.equal(torch.rand(3), global_draw)  # the seeded call did not advance the global RNG
    other_seed = backend.generate(PROMPTS, group_size=2, params=SamplingParams(max_new_tokens=10, seed=12))
    assert [r.response_ids for r in other_seed] != [r.response_ids for r in first]


def test_unseeded_generation_follows_global_rng(backend):
    params = SamplingParams(max_new_tokens=10)
    torch.manual_seed(5)
    first = backend.generate(PROMPTS, group_size=2, params=params)
    torch.manual_seed(5)
    assert backend.generate(PROMPTS, group_size=2, params=params) == first


def test_group_members_are_sampled_independently(backend):
    rollouts = backend.generate([PROMPTS[0]], group_size=8, params=SamplingParams(max_new_tokens=10, seed=4))
    assert len({tuple(r.response_ids) for r in rollouts}) > 1


# ----------------------------------------------------------------------------------- model handling


def test_restores_training_mode(model, backend):
    model.train()
    backend.generate([PROMPTS[0]], group_size=1, params=SamplingParams(max_new_tokens=2, seed=0))
    assert model.training
    model.eval()


def test_decoding_warns_of_no_deprecated_argument(backend):
    # A deprecated argument works until the release that removes it, then decoding breaks.
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        backend.generate(PROMPTS, group_size=2, params=SamplingParams(max_new_tokens=4, seed=0))
        backend.greedy(PROMPTS, max_new_tokens=4)


class LegacyCacheName(torch.nn.Module):
    """A model whose forward takes the KV cache as past_key_values (transformers < 5.24, remote code)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep):
        name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **{name: past_key_values},
        )


def test_a_forward_without_the_cache_argument_gets_past_key_values(model, backend):
    legacy = HFRolloutBackend(LegacyCacheName(model), make_tokenizer(), eos_token_ids=STOP_IDS)
    params = SamplingParams(max_new_tokens=10, seed=3)
    assert legacy.generate(PROMPTS, group_size=2, params=params) == backend.generate(PROMPTS, 2, params)


def test_sync_weights(model):
    copy = make_model(seed=1)
    backend = HFRolloutBackend(copy, make_tokenizer(), eos_token_ids=STOP_IDS)
    backend.sync_weights(copy)  # the shared model: nothing to do
    assert not torch.equal(copy.lm_head.weight, model.lm_head.weight)
    backend.sync_weights(model)
    for name, parameter in model.state_dict().items():
        assert torch.equal(copy.state_dict()[name], parameter), name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"max_new_tokens": 4, "temperature": 0.0}, "temperature must be > 0"),
        ({"max_new_tokens": 4, "top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ],
)
def test_sampling_params_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_generate_validation(backend):
    params = SamplingParams(max_new_tokens=4)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        backend.generate(PROMPTS, group_size=0, params=params)
    with pytest.raises(ValueError, match="at least one token"):
        backend.generate([[5], []], group_size=1, params=params)
