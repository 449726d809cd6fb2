"""Partial rollouts' decoder (lrm_fast/rollout/partial.py): responses that go on across a weight update.

On the tiny random Qwen2 model of test_hf_rollout: the weights of two versions are two seeds' models, loaded
into one sampler model as a worker loads each push."""

import copy

import pytest
import torch
from test_hf_rollout import PROMPTS, STOP_IDS, make_model, make_tokenizer, recomputed_logprobs

from lrm_fast.rollout import SamplingParams
from lrm_fast.rollout.hf import HFRolloutBackend
from lrm_fast.rollout.partial import Chunk, PartialDecoder

pytestmark = pytest.mark.usefixtures("one_thread")

LIMIT = 24
# Several stop tokens end ~6% of steps: responses range from one token to the limit.
PARAMS = SamplingParams(max_new_tokens=LIMIT, temperature=0.8, top_p=0.9)


@pytest.fixture(scope="module")
def versions():
    """Each version's weights."""
    return {0: make_model(0).state_dict(), 1: make_model(1).state_dict()}


def _decoder(versions, version=0):
    model = make_model(0)
    model.load_state_dict(versions[version])
    backend = HFRolloutBackend(model, make_tokenizer(), eos_token_ids=STOP_IDS)
    return PartialDecoder(backend, PARAMS), model


def test_a_chunk_alone_samples_what_the_decode_loop_samples(versions):
    decoder, model = _decoder(versions)
    decoder.land(0, [Chunk("a", PROMPTS, 3, seed=7)])
    (key, rollouts), *rest = decoder.decode(None)
    assert (key, rest, decoder.empty) == ("a", [], True)
    backend = HFRolloutBackend(model, make_tokenizer(), eos_token_ids=STOP_IDS)
    expected = backend.generate(PROMPTS, 3, SamplingParams(LIMIT, 0.8, 0.9, seed=7))
    assert [r.response_ids for r in rollouts] == [r.response_ids for r in expected]
    assert [r.logprobs for r in rollouts] == [r.logprobs for r in expected]
    assert [r.finished for r in rollouts] == [r.finished for r in expected]
    assert all(r.versions == [0] * len(r.response_ids) for r in rollouts)
    assert {len(r.response_ids) for r in rollouts} >= {LIMIT}  # truncated ones included


def test_responses_that_span_an_update_carry_both_versions_and_each_token_its_own_logprob(versions):
    decoder, model = _decoder(versions)
    decoder.land(0, [Chunk("first", PROMPTS, 3, seed=1)])
    early = decoder.decode(6)
    model.load_state_dict(versions[1])
    decoder.land(1, [Chunk("second", PROMPTS[:2], 2, seed=2)])
    ended = dict(early + decoder.decode(None))
    assert list(ended) == ["first", "second"] and decoder.empty
    first = ended["first"]
    assert all(r.versions == [0] * min(6, len(r.versions)) + [1] * (len(r.versions) - 6) for r in first)
    spanning = [r for r in first if len(r.response_ids) > 6]
    assert len(spanning) >= 3  # the batch carries both versions
    assert all(set(r.versions) == {1} for r in ended["second"])
    models = {v: copy.deepcopy(model) for v in versions}
    for v, state in versions.items():
        models[v].load_state_dict(state)
    for rollout in first + ended["second"]:
        for v in set(rollout.versions):
            recomputed = recomputed_logprobs(models[v], rollout, 0.8, top_p=0.9)
            own = torch.tensor(rollout.versions) == v
            torch.testing.assert_close(
                torch.tensor(rollout.logprobs)[own], recomputed[own], rtol=0, atol=1e-5
            )
            # The other version gives other log-probs to the same tokens: the check tells the two apart.
            other = recomputed_logprobs(models[1 - v], rollout, 0.8, top_p=0.9)
            assert (torch.tensor(rollout.logprobs)[own] - other[own]).abs().max() > 1e-3


def test_landings_at_fixed_decode_steps_make_the_pool_reproducible(versions):
    def run():
        decoder, model = _decoder(versions)
        decoder.land(0, [Chunk(0, PROMPTS, 2, seed=3)])
        out = decoder.decode(5)
        model.load_state_dict(versions[1])
        decoder.land(1, [Chunk(1, PROMPTS, 2, seed=4)])
        return out + decoder.decode(None)

    first, again = run(), run()
    assert [(k, [r.response_ids for r in rs]) for k, rs in first] == [
        (k, [r.response_ids for r in rs]) for k, rs in again
    ]


def test_a_chunk_draws_from_its_own_generator(versions):
    """Another chunk in the pool changes the batch a row is decoded in, not the draws of its chunk: with the
    same weights and seed, a chunk samples the same tokens alone or beside another."""
    alone, _ = _decoder(versions)
    alone.land(0, [Chunk("a", PROMPTS[:2], 2, seed=5)])
    beside, _ = _decoder(versions)
    beside.land(0, [Chunk("b", PROMPTS[2:], 3, seed=6), Chunk("a", PROMPTS[:2], 2, seed=5)])
    a_alone = dict(alone.decode(None))["a"]
    a_beside = dict(beside.decode(None))["a"]
    assert [r.response_ids for r in a_beside] == [r.response_ids for r in a_alone]
    torch.testing.assert_close(
        [torch.tensor(r.logprobs) for r in a_beside],
        [torch.tensor(r.logprobs) for r in a_alone],
        rtol=0,
        atol=1e-5,
    )


def test_bad_chunks_are_refused(versions):
    decoder, _ = _decoder(versions)
    decoder.land(0, [Chunk("a", PROMPTS, 1, seed=0)])
    with pytest.raises(ValueError, match="chunk 'a' is already in the pool"):
        decoder.land(0, [Chunk("a", PROMPTS, 1, seed=0)])
    with pytest.raises(ValueError, match="every prompt needs at least one token"):
        decoder.land(0, [Chunk("b", [[]], 1, seed=0)])
