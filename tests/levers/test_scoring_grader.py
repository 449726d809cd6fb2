"""The training reward's grading: the study's answer section when reward.think_format is on, and any
accepted form of the answer, for sampled and injected responses alike (lrm_fast/levers/scoring.py)."""

import pytest

from lrm_fast.config import InjectionConfig, RewardConfig
from lrm_fast.data.examples import PromptExample
from lrm_fast.data.tokenizer import build_tokenizer
from lrm_fast.levers.injection import SolutionBank
from lrm_fast.levers.scoring import score_rollouts
from lrm_fast.rollout import Rollout

G = 4
NO_INJECTION = InjectionConfig()


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def rollout(tokenizer, prompt_ids, text):
    ids = tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return Rollout(prompt_ids, ids, [0.0] * len(ids), finished=True)


def test_think_format_rewards_no_response_without_think_end(tokenizer):
    prompt = tokenizer("2+3")["input_ids"]
    unfinished, finished = "<think>2+3=5 \\boxed{5}", "<think>2+3=5</think>\\boxed{5}"
    group = [rollout(tokenizer, prompt, text) for text in (unfinished, finished, unfinished, finished)]
    examples = [PromptExample(id="p", problem="2+3", answer="5")]
    lenient = score_rollouts(examples, group, G, tokenizer, RewardConfig(), NO_INJECTION, None, "std")
    study = RewardConfig(think_format=True)
    scored = score_rollouts(examples, group, G, tokenizer, study, NO_INJECTION, None, "std")
    assert [s.correct for s in lenient.samples] == [True] * G
    assert [s.reward for s in scored.samples] == [0.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize(("think_format", "rewarded"), [(False, True), (True, False)])
def test_injected_solutions_are_graded_by_the_same_rule(tokenizer, think_format, rewarded):
    # A stored solution that never closes its thoughts: injected either way, rewarded only without the rule.
    example = PromptExample(id="p", problem="2+3", answer="5", solutions=("<think>2+3=5 \\boxed{5}",))
    group = [rollout(tokenizer, tokenizer("2+3")["input_ids"], "<think>2+3=6</think>\\boxed{6}")] * G
    bank = SolutionBank(tokenizer, max_new_tokens=64, solutions_by_id=None)
    injection = InjectionConfig(name="osi", alpha=0.125, cap=1)
    reward = RewardConfig(think_format=think_format)
    scored = score_rollouts([example], group, G, tokenizer, reward, injection, bank, "std")
    assert scored.injected == 1 and scored.samples[0].injected
    assert scored.samples[0].correct is rewarded


def test_any_accepted_form_of_the_answer_earns_the_reward(tokenizer):
    example = PromptExample(id="p", problem="2+3", answer="7", alternatives=("5",))
    prompt = tokenizer("2+3")["input_ids"]
    group = [rollout(tokenizer, prompt, f"<think>2+3</think>\\boxed{{{n}}}") for n in (5, 7, 6, 8)]
    scored = score_rollouts([example], group, G, tokenizer, RewardConfig(), NO_INJECTION, None, "std")
    assert [s.correct for s in scored.samples] == [True, True, False, False]
