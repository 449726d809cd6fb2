"""The study's mechanisms around the levers, on hand-made groups: the repetition reward, truncation
masking, the uncapped injection and the regimes' reserve (PAPER.md §2, §5)."""

from dataclasses import replace

import pytest

from lrm_fast.batching import samples as B
from lrm_fast.config import InjectionConfig, RegimeConfig, RewardConfig, TrainConfig
from lrm_fast.config.validation import validate
from lrm_fast.data.examples import PromptExample
from lrm_fast.data.tokenizer import build_tokenizer
from lrm_fast.levers.injection import SolutionBank, plan_injections
from lrm_fast.levers.regimes import RegimeSchedule, apply_regime
from lrm_fast.levers.rewards import distinct_ngrams, repetition_penalties
from lrm_fast.levers.scoring import lever_metrics, mask_truncated, score_rollouts
from lrm_fast.rollout import Rollout

G = 4
NO_INJECTION = InjectionConfig()


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def rollout(tokenizer, prompt_ids, text, eos=True):
    ids = tokenizer(text + (tokenizer.eos_token if eos else ""), add_special_tokens=False)["input_ids"]
    return Rollout(prompt_ids, ids, [0.0] * len(ids), finished=eos)


# ------------------------------------------------------------------------------------ repetition reward
def test_distinct_ngrams_of_a_hand_written_text():
    # Lower-cased, split on any whitespace: the, cat, sat., the, cat, sat.
    # Bigrams: (the cat) (cat sat.) (sat. the) (the cat) (cat sat.): 3 distinct of 5.
    assert distinct_ngrams("The cat  sat.\nthe\tCAT sat.", 2) == (3, 5)
    assert distinct_ngrams("one two three", 4) == (0, 0)  # fewer words than n: no n-gram


def test_repetition_penalty_with_the_studys_40_grams():
    # A 10-word sentence written 10 times: 100 words, 61 40-grams; the text has period 10, so the
    # 40-gram at j equals the one at j + 10 and 10 are distinct: (1 - 10/61) * -2 = -102/61.
    sentence = "so the answer is seven and we add one to "
    looping, fresh = sentence * 10, " ".join(str(i) for i in range(100))
    penalties = repetition_penalties([looping, fresh, looping], [False, False, True], 40, -2.0)
    assert penalties[0] == pytest.approx(-102 / 61)
    assert penalties[1] == 0  # 61 distinct 40-grams of 61
    assert penalties[2] == 0  # correct responses are never penalised


def test_repetition_text_is_the_prompt_then_the_response(tokenizer):
    # As the study's reward manager decodes it: "1 1 1 1 1 1 <think>2+3=6</think>\boxed{6}<|im_end|>" is
    # six "1" and one word: 6 bigrams, 2 distinct: (1 - 2/6) * -1.5 = -1. The response alone has none.
    prompt = tokenizer("1 1 1 1 1 1 ")["input_ids"]
    group = [rollout(tokenizer, prompt, "<think>2+3=6</think>\\boxed{6}")] * G
    examples = [PromptExample(id="p", problem="1", answer="5")]
    reward = RewardConfig(repetition_penalty=-1.5, repetition_ngram=2)
    scored = score_rollouts(examples, group, G, tokenizer, reward, NO_INJECTION, None, "std")
    assert [s.reward for s in scored.samples] == pytest.approx([-1.0] * G)


# ------------------------------------------------------------------------------------ truncation masking
def looping_group(tokenizer):
    """One correct response, one incorrect loop that fills a 16-token window, two short wrong ones."""
    prompt = tokenizer("2+3")["input_ids"]
    loop = rollout(tokenizer, prompt, "<think>" + "1 " * 7 + "1", eos=False)  # 1 + 15 = 16 tokens
    wrong = rollout(tokenizer, prompt, "<think>2+3=6</think>\\boxed{6}")
    group = [rollout(tokenizer, prompt, "<think>2+3=5</think>\\boxed{5}"), loop, wrong, wrong]
    return [PromptExample(id="p", problem="2+3", answer="5")], group


@pytest.mark.parametrize("reward_name", ["binary", "rlr"])
def test_truncation_masking_zeroes_the_looping_incorrect_response(tokenizer, reward_name):
    examples, group = looping_group(tokenizer)
    assert len(group[1].response_ids) == 16
    # The loop's text is its prompt and response: words "2+3<think>1" and seven "1": 7 bigrams, 2
    # distinct, so its reward is (1 - 2/7) * -1.4 = -1. The short wrong ones are one word each: no
    # bigram, no penalty. RLR (tau 0.25) shapes the lone correct response by its own mean: 1 + 0.
    reward = RewardConfig(name=reward_name, tau=0.25, repetition_penalty=-1.4, repetition_ngram=2)
    masked = replace(reward, truncated="mask")
    plain = score_rollouts(examples, group, G, tokenizer, reward, NO_INJECTION, None, "std", 16)
    scored = score_rollouts(examples, group, G, tokenizer, masked, NO_INJECTION, None, "std", 16)
    assert [s.reward for s in scored.samples] == pytest.approx([1.0, -1.0, 0.0, 0.0])
    # Rewards 1, -1, 0, 0: mean 0, unbiased std sqrt(2/3) = 0.8165, so A = +-1.2247 for the first two.
    assert [s.advantage for s in plain.samples] == pytest.approx([1.2247, -1.2247, 0, 0], abs=1e-4)
    # Masked: the loop's advantage is 0, the others keep theirs: the group's mean and std still count
    # its -1 (without it the correct one would get (1 - 1/3) / 0.5774 = 1.1547).
    assert [s.advantage for s in scored.samples] == pytest.approx([1.2247, 0, 0, 0], abs=1e-4)
    assert scored.counts == pytest.approx(
        {"repetition_penalty": -1.0, "repetition_penalised": 1, "truncation_masked": 1}
    )
    totals = {"responses": 4.0, **scored.counts}
    assert lever_metrics(totals) == pytest.approx(
        {
            "reward/repetition_penalty": -0.25,
            "reward/repetition_penalised": 0.25,
            "reward/truncation_masked": 0.25,
        }
    )


@pytest.mark.parametrize(
    ("correct", "length", "penalty", "masked"),
    [
        (False, 16, -1.0, True),  # incorrect, fills the window (a final EOS included), penalised
        (True, 16, -1.0, False),  # correct
        (False, 15, -1.0, False),  # ended inside the window
        (False, 16, 0.0, False),  # no repetition penalty: the study masks only penalised responses
    ],
)
def test_truncation_masking_condition(correct, length, penalty, masked):
    sample = B.Sample([1], [2] * length, penalty, correct, advantage=-0.7)
    assert mask_truncated([sample], [penalty], 16, "mask") == int(masked)
    assert sample.advantage == (0.0 if masked else -0.7)


def test_defaults_change_no_reward_and_log_no_new_metric(tokenizer):
    examples, group = looping_group(tokenizer)
    scored = score_rollouts(examples, group, G, tokenizer, RewardConfig(), NO_INJECTION, None, "std", 16)
    assert [s.reward for s in scored.samples] == [1.0, 0.0, 0.0, 0.0]
    assert scored.counts == {} and lever_metrics({"responses": 4.0}) == {}


# ------------------------------------------------------------------------------------ injection cap
def test_no_cap_replaces_every_incorrect_response_while_solutions_last():
    correct = [False] * 4 + [True, False, False, False]
    assert plan_injections(correct, G, alpha=0.25, cap=1, available=[9, 9]) == [(0, 0), (5, 0)]
    uncapped = plan_injections(correct, G, alpha=0.25, cap=None, available=[9, 2])
    assert uncapped == [(0, 0), (1, 1), (2, 2), (3, 3), (5, 0), (6, 1)]


@pytest.mark.parametrize(
    ("cap", "solutions", "advantages", "all_correct_after"),
    [
        # One solution in an all-wrong group: rewards 1, 0, 0, 0: (1 - 0.25) / 0.5 = 1.5, -0.25 / 0.5.
        (1, 4, [1.5, -0.5, -0.5, -0.5], 0),
        # No cap and 4 solutions: all correct again, zero advantage.
        (None, 4, [0.0, 0.0, 0.0, 0.0], 1),
        # No cap and 2 solutions: 1, 1, 0, 0: +-0.5 / sqrt(1/3) = +-0.866.
        (None, 2, [0.866, 0.866, -0.866, -0.866], 0),
    ],
    ids=["cap1", "uncapped_enough_solutions", "uncapped_two_solutions"],
)
def test_injection_cap_on_an_all_wrong_group(tokenizer, cap, solutions, advantages, all_correct_after):
    good = "<think>2+3=5</think>\\boxed{5}"
    example = PromptExample(id="p", problem="2+3", answer="5", solutions=(good,) * solutions)
    prompt = tokenizer("2+3")["input_ids"]
    group = [rollout(tokenizer, prompt, "<think>2+3=6</think>\\boxed{6}")] * G
    bank = SolutionBank(tokenizer, max_new_tokens=64, solutions_by_id=None)
    injection = InjectionConfig(name="osi", alpha=0.125, cap=cap)
    scored = score_rollouts([example], group, G, tokenizer, RewardConfig(), injection, bank, "std")
    assert [s.advantage for s in scored.samples] == pytest.approx(advantages, abs=1e-3)
    assert (scored.before.all_wrong, scored.after.all_correct) == (1, all_correct_after)


# ------------------------------------------------------------------------------------ reserve
def graded(correct: list[bool]) -> list[B.Sample]:
    return [B.Sample([1], [2, 3], float(c), c) for c in correct]


def reserve_weights(correct, regime, ratio, minimum, step=1, seed=0):
    samples = graded(correct)
    cfg = RegimeConfig(name=regime, reserve_ratio=ratio, reserve_min=minimum, drop_zero_variance=False)
    apply_regime(samples, regime, cfg, RegimeSchedule(cfg, seed=seed).rng(step))
    return [s.regime_weight for s in samples]


def test_reserve_zero_is_todays_regime():
    correct = [True, False, False, True, False, True, False, False]
    today = graded(correct)
    apply_regime(today, "positive", RegimeConfig(name="positive"))  # no generator: nothing is drawn
    assert reserve_weights(correct, "positive", 0.0, 0) == [s.regime_weight for s in today]
    assert reserve_weights(correct, "positive", 0.0, 0) == [float(c) for c in correct]


def test_reserve_ratio_keeps_unwanted_responses_at_that_rate_deterministically():
    correct = [i % 4 == 0 for i in range(2000)]  # 500 correct, 1500 incorrect
    weights = reserve_weights(correct, "positive", 0.25, 0)
    assert weights == reserve_weights(correct, "positive", 0.25, 0)  # same seed and step: same draws
    assert weights != reserve_weights(correct, "positive", 0.25, 0, step=2)
    assert weights != reserve_weights(correct, "positive", 0.25, 0, seed=1)
    assert all(w == 1.0 for w, c in zip(weights, correct, strict=True) if c)  # wanted ones always kept
    reserved = sum(w for w, c in zip(weights, correct, strict=True) if not c)
    assert 0.2 < reserved / 1500 < 0.3
    assert reserve_weights(correct, "positive", 1.0, 0) == [1.0] * 2000


def test_reserve_minimum_counts_every_kept_response():
    correct = [True, True, True, False, False, False, False, False]
    # Positive-only keeps the 3 correct ones; negative-only the 5 incorrect ones.
    assert sum(reserve_weights(correct, "positive", 0.0, 5)) == 5  # 2 incorrect ones reserved
    assert sum(reserve_weights(correct, "positive", 0.0, 2)) == 3  # already 3 kept: nothing added
    assert sum(reserve_weights(correct, "negative", 0.0, 7)) == 7  # 5 incorrect + 2 correct
    assert sum(reserve_weights(correct, "negative", 0.0, 99)) == 8  # every response, no error
    # Which ones are added is random but fixed by the seed and step.
    assert reserve_weights(correct, "positive", 0.0, 5) == reserve_weights(correct, "positive", 0.0, 5)


def test_reserve_leaves_full_and_weighted_alone_and_needs_a_generator():
    correct = [True, False, False, False]
    assert reserve_weights(correct, "full", 0.0, 4) == [1.0] * 4
    with pytest.raises(ValueError, match="reserve"):
        apply_regime(graded(correct), "positive", RegimeConfig(name="positive", reserve_ratio=0.5))


# ------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("section", "overrides", "message"),
    [
        ("regime", {"reserve_ratio": 1.5}, "regime.reserve_ratio must be in [0, 1], got 1.5"),
        ("regime", {"reserve_min": -1}, "regime.reserve_min must be >= 0, got -1"),
        ("reward", {"repetition_penalty": 2.0}, "reward.repetition_penalty must be <= 0 (0: off), got 2.0"),
        ("reward", {"repetition_ngram": 0}, "reward.repetition_ngram must be > 0, got 0"),
        ("reward", {"truncated": "mask"}, "reward.truncated=mask needs reward.repetition_penalty < 0"),
        (
            "reward",
            {"overlong_buffer": 64},
            "reward.overlong_buffer must be in [0, rollout.max_new_tokens (64))",
        ),
        ("reward", {"overlong_penalty": -1.0}, "reward.overlong_penalty must be >= 0, got -1.0"),
        ("sampling", {"oversample": 0.5}, "sampling.oversample must be >= 1, got 0.5"),
        ("sampling", {"max_rounds": 0}, "sampling.max_rounds must be >= 1, got 0"),
        ("injection", {"cap": 0}, "injection.cap must be >= 1 (or null: no cap), got 0"),
    ],
)
def test_new_keys_are_range_checked(section, overrides, message):
    cfg = TrainConfig()
    for key, value in overrides.items():
        setattr(getattr(cfg, section), key, value)
    with pytest.raises(ValueError) as error:
        validate(cfg)
    assert message in str(error.value)


def test_study_values_validate():
    cfg = TrainConfig()
    cfg.injection.cap = None
    cfg.reward.repetition_penalty, cfg.reward.repetition_ngram, cfg.reward.truncated = -2.0, 40, "mask"
    cfg.regime.reserve_ratio, cfg.regime.reserve_min = 0.25, 512  # ppo_trainer.yaml's defaults
    validate(cfg)
