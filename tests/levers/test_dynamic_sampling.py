"""Dynamic sampling and DAPO's overlong handling on hand-made groups: which groups are informative (after
RLR and OSI), when the refill rounds stop, the overlong penalty, and overlong filtering's zero gradient."""

import pytest
import torch
from trainer_fixtures import flat_grad, synthetic_samples, tiny_model

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import InjectionConfig, LossConfig, RewardConfig, SamplingConfig
from lrm_fast.data.examples import PromptExample
from lrm_fast.data.sampler import PromptSampler
from lrm_fast.data.tokenizer import build_tokenizer
from lrm_fast.levers.dynamic_sampling import is_informative, select_groups
from lrm_fast.levers.injection import SolutionBank
from lrm_fast.levers.rewards import overlong_penalties
from lrm_fast.levers.scoring import ScoredStep, ZeroVarianceCounts, mask_truncated, score_rollouts
from lrm_fast.rollout import Rollout
from lrm_fast.training.update import micro_batch_loss

G = 4
RIGHT, WRONG = "<think>2+3=5</think>\\boxed{5}", "<think>2+3=6</think>\\boxed{6}"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def rollout(tokenizer, text, eos=True):
    prompt = tokenizer("2+3")["input_ids"]
    ids = tokenizer(text + (tokenizer.eos_token if eos else ""), add_special_tokens=False)["input_ids"]
    return Rollout(prompt, ids, [0.0] * len(ids), finished=eos)


def three_groups(tokenizer):
    """An all-correct group of two lengths, an all-wrong group with a stored solution, a mixed group."""
    longer = RIGHT.replace("<think>", "<think> ")
    examples = [PromptExample(id=f"p{i}", problem="2+3", answer="5", solutions=(RIGHT,)) for i in range(3)]
    texts = [RIGHT, longer, RIGHT, longer] + [WRONG] * G + [RIGHT, WRONG, WRONG, WRONG]
    return examples, [rollout(tokenizer, t) for t in texts]


def informative_flags(tokenizer, reward, injection, rule):
    examples, rollouts = three_groups(tokenizer)
    bank = SolutionBank(tokenizer, 64, None)
    scored = score_rollouts(examples, rollouts, G, tokenizer, reward, injection, bank, "std", 64)
    return [is_informative(scored.samples[i : i + G], rule) for i in range(0, 3 * G, G)]


@pytest.mark.parametrize(
    ("reward", "injection", "rule", "expected"),
    [
        ("binary", "none", "reward", [False, False, True]),
        # RLR gives the all-correct group's shorter answers more reward: its rewards vary ...
        ("rlr", "none", "reward", [True, False, True]),
        # ... but all its answers are still correct, so DAPO's accuracy rule keeps it out.
        ("rlr", "none", "correctness", [False, False, True]),
        # OSI puts a correct solution into the all-wrong group: informative under both rules.
        ("binary", "osi", "reward", [False, True, True]),
        ("binary", "osi", "correctness", [False, True, True]),
        ("rlr", "osi", "reward", [True, True, True]),
    ],
)
def test_informative_groups_are_judged_after_the_levers(tokenizer, reward, injection, rule, expected):
    reward_cfg = RewardConfig(name=reward, tau=0.75, b=1.0)  # b = 1 token: a one-token length gap shapes
    injection_cfg = InjectionConfig(name=injection, alpha=0.125, cap=1)
    assert informative_flags(tokenizer, reward_cfg, injection_cfg, rule) == expected


# ------------------------------------------------------------------------------------ the refill loop
def scored_round(pattern: list[bool], length: int = 3) -> ScoredStep:
    """A scored round whose groups are informative (mixed 0/1 rewards) or all wrong, per `pattern`."""
    samples = []
    for informative in pattern:
        for i in range(G):
            correct = informative and i == 0
            samples.append(B.Sample([1], [2] * length, float(correct), correct))
    B.assign_advantages(samples, G, "std")
    counts = ZeroVarianceCounts(0, sum(not p for p in pattern), len(pattern))
    return ScoredStep(samples, counts, counts, 0, 0, generated_tokens=len(samples) * length)


def drawing(rounds):
    queue = list(rounds)
    return lambda: queue.pop(0)


def test_rounds_stop_once_the_quota_is_full():
    rounds = [scored_round([True, False]), scored_round([False, True]), scored_round([True, True])]
    selection = select_groups(drawing(rounds), 2, G, SamplingConfig(name="dynamic", max_rounds=4))
    assert (selection.rounds, selection.kept, selection.informative, selection.padded) == (2, 2, 2, 0)
    assert (selection.prompts, selection.generated_tokens) == (4, 4 * G * 3)
    trained = selection.samples
    assert trained == rounds[0].samples[:G] + rounds[1].samples[G:]  # informative groups, in sampling order
    assert len(selection.sampled.samples) == 4 * G and selection.sampled.after.all_wrong == 2


def test_informative_groups_beyond_the_quota_are_dropped():
    first = scored_round([True, True, True])
    selection = select_groups(drawing([first]), 2, G, SamplingConfig(name="dynamic"))
    assert (selection.rounds, selection.kept, selection.informative) == (1, 2, 3)
    assert selection.samples == first.samples[: 2 * G]


@pytest.mark.parametrize(("when_short", "groups"), [("fewer", 1), ("pad", 3)])
def test_max_rounds_ends_a_short_batch_with_fewer_or_padded_groups(when_short, groups):
    rounds = [scored_round([False, False]), scored_round([True, False]), scored_round([True, True])]
    cfg = SamplingConfig(name="dynamic", max_rounds=2, when_short=when_short)
    selection = select_groups(drawing(rounds), 3, G, cfg)
    assert (selection.rounds, selection.kept) == (2, 1)
    assert len(selection.samples) == groups * G and selection.padded == groups - 1
    assert selection.samples[:G] == rounds[1].samples[:G]
    if when_short == "pad":  # topped up with the first zero-variance groups sampled
        assert selection.samples[G:] == rounds[0].samples
    assert selection.generated_tokens == 4 * G * 3  # the third round was never drawn


def test_every_rank_runs_until_all_quotas_are_full():
    # This rank fills its quota in round 1, another rank only in round 3: all draw three rounds.
    others_full = iter([False, False, True])
    rounds = [scored_round([True, True]), scored_round([True]), scored_round([False])]
    cfg = SamplingConfig(name="dynamic", max_rounds=5)
    selection = select_groups(drawing(rounds), 1, G, cfg, all_full=lambda full: full and next(others_full))
    assert (selection.rounds, selection.kept, selection.informative) == (3, 1, 3)
    assert selection.samples == rounds[0].samples[:G]


def test_a_failed_round_fails_the_step():
    rounds = [scored_round([False]), None]
    assert select_groups(drawing(rounds), 1, G, SamplingConfig(name="dynamic")) is None


def test_sampler_rounds_draw_from_the_same_resumable_order():
    examples = [PromptExample(id=str(i), problem=str(i), answer=str(i)) for i in range(10)]
    sampler = PromptSampler(examples, 4, seed=3)
    reference = PromptSampler(examples, 4, seed=3)
    assert sampler.next_batch(6) == reference.next_batch() + reference.next_batch(2)
    sampler.next_batch(6)  # 4 left: a new epoch starts
    assert sampler.state_dict() == {**reference.state_dict(), "epoch": 1, "position": 6}
    with pytest.raises(ValueError, match=r"size must be in \[1, 10\]"):
        sampler.next_batch(11)


# ------------------------------------------------------------------------------------ overlong shaping
def test_soft_overlong_penalty_at_its_boundaries():
    # L_max 16, L_cache 4: free up to 12 tokens, then -1/4 per token, -1 at 16 (times the factor).
    lengths = [1, 11, 12, 13, 14, 16]
    assert overlong_penalties(lengths, 16, 4, 1.0) == [0.0, 0.0, 0.0, -0.25, -0.5, -1.0]
    assert overlong_penalties([12, 13, 16], 16, 4, 0.5) == [0.0, -0.125, -0.5]
    with pytest.raises(ValueError, match="overlong buffer must be in"):
        overlong_penalties([1], 16, 16, 1.0)


def test_overlong_penalty_enters_every_reward(tokenizer):
    examples = [PromptExample(id="p", problem="2+3", answer="5")]
    rollouts = [rollout(tokenizer, RIGHT), rollout(tokenizer, WRONG)] * 2
    length = len(rollouts[0].response_ids)  # both 17 tokens, EOS included
    reward = RewardConfig(overlong_buffer=4, overlong_penalty=1.0)
    scored = score_rollouts(
        examples, rollouts, G, tokenizer, reward, InjectionConfig(), None, "std", length + 1
    )
    # L_max = length + 1, so each response is 3 tokens into the 4-token buffer: -3/4.
    assert [s.reward for s in scored.samples] == pytest.approx([0.25, -0.75] * 2)
    assert scored.counts == pytest.approx({"overlong_penalty": -3.0, "overlong_penalised": 4})


# ------------------------------------------------------------------------------------ overlong filtering
@pytest.mark.parametrize(
    ("length", "ends_in_eos", "filtered"),
    [(16, False, True), (16, True, False), (15, False, False)],
    ids=["cut_at_the_window", "eos_on_the_last_token", "ended_inside"],
)
@pytest.mark.parametrize("correct", [True, False])
def test_overlong_filter_takes_every_cut_response(length, ends_in_eos, filtered, correct):
    eos = 0
    sample = B.Sample([1], [2] * (length - 1) + [eos if ends_in_eos else 2], 1.0, correct, advantage=0.5)
    assert mask_truncated([sample], [0.0], 16, "filter", eos) == int(filtered)
    assert (sample.filtered, sample.forward, sample.advantage) == (filtered, not filtered, 0.5)


def _grad(model, samples, aggregation):
    """The trainer's path: global normalisers, weights, micro-batches, loss, backward."""
    normalisers = B.local_normalisers(samples)
    model.zero_grad(set_to_none=True)
    loss_cfg = LossConfig(kl_coef=0.0, entropy_coef=0.01, backend="torch")
    for group in M.weighted_micro_batches(samples, aggregation, normalisers, 10, 10_000, False):
        loss, _ = micro_batch_loss(model, None, M.collate(group, False), loss_cfg, 1.0)
        loss.backward()
    return flat_grad(model)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "micro_batch_token_mean"])
def test_filtered_responses_contribute_exactly_zero_gradient(aggregation):
    model = tiny_model()
    samples = synthetic_samples(num_groups=2, group_size=G)
    B.assign_advantages(samples, G, "std")
    cut = samples[1]
    assert cut.advantage != 0
    cut.filtered, cut.forward = True, False
    with_filtered = _grad(model, samples, aggregation)
    without = _grad(model, [s for s in samples if s is not cut], aggregation)
    assert torch.equal(with_filtered, without)
    # The study's mask keeps the response in the normalisers: under token_mean the others' step shrinks.
    cut.filtered, cut.forward, cut.advantage = False, True, 0.0
    masked = _grad(model, samples, aggregation)
    assert not torch.allclose(masked, without)
