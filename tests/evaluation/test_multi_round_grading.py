"""How the multi-round evaluator grades: the protocol's answer section (think_format) and every accepted
form of an answer, in its scores and in the run file (lrm_fast/evaluation/multi_round.py)."""

import json
from dataclasses import replace

import pytest

from lrm_fast.config import EvalProtocol
from lrm_fast.data.examples import PromptExample
from lrm_fast.data.tokenizer import build_tokenizer
from lrm_fast.evaluation.multi_round import evaluate
from lrm_fast.rollout import Rollout

PROTOCOL = EvalProtocol(samples_per_problem=2, max_new_tokens=32, greedy=False, max_rounds=1)
# Problem 0 is answered with its second accepted form; problem 1 is answered right but never leaves its
# thoughts, as a response cut off at the length limit.
EXAMPLES = [
    PromptExample(id="a", problem="0", answer="7", alternatives=("5",)),
    PromptExample(id="b", problem="1", answer="3"),
]
RESPONSES = {(0,): "<think>2+3</think>\\boxed{5}", (1,): "<think>1+2=3 \\boxed{3}"}


class FixedBackend:
    """The same response to every sample of a prompt."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def generate(self, prompts, group_size, params):
        rollouts = []
        for prompt in prompts:
            ids = self.tokenizer.encode(RESPONSES[tuple(prompt)], add_special_tokens=False)
            rollouts += [Rollout(list(prompt), ids, [0.0] * len(ids), finished=True)] * group_size
        return rollouts


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.mark.parametrize(("think_format", "score"), [(False, 1.0), (True, 0.5)])
def test_the_protocol_grades_by_its_rule_and_any_accepted_form(tokenizer, tmp_path, think_format, score):
    protocol = replace(PROTOCOL, think_format=think_format)
    path = tmp_path / "run.json"
    summary = evaluate(FixedBackend(tokenizer), tokenizer, EXAMPLES, [[0], [1]], protocol, path, name="toy")
    assert summary["score"] == score
    problems = json.loads(path.read_text())["benchmarks"]["toy"]["problems"]
    assert problems[0]["answers"] == ["7", "5"] and problems[1]["answers"] == ["3"]
    # The stored answer is the one graded: none for a response the rule finds no answer in.
    assert [s["answer"] for s in problems[1]["samples"]] == [None if think_format else "3"] * 2


def test_resume_refuses_another_grading_rule(tokenizer, tmp_path):
    backend, path = FixedBackend(tokenizer), tmp_path / "run.json"
    evaluate(backend, tokenizer, EXAMPLES, [[0], [1]], PROTOCOL, path)
    with pytest.raises(
        ValueError, match="cannot resume with think_format=True, the stored rounds used False"
    ):
        evaluate(
            backend, tokenizer, EXAMPLES, [[0], [1]], replace(PROTOCOL, think_format=True, max_rounds=2), path
        )
    # A run file written before the rule existed graded without it: it resumes with the rule off.
    run = json.loads(path.read_text())
    del run["benchmarks"]["heldout"]["settings"]["think_format"]
    path.write_text(json.dumps(run))
    evaluate(backend, tokenizer, EXAMPLES, [[0], [1]], replace(PROTOCOL, max_rounds=2), path)
