"""The long arithmetic task: correct and gradable solutions, the teacher's slips, checks and spaces,
disjoint and seeded splits, the length distribution its docstring states, and the repetition reward."""

import itertools
import random
import re
import statistics

import pytest

from lrm_fast.config import DataConfig, LongDifficultyConfig
from lrm_fast.config.choices import DataSource
from lrm_fast.data.arithmetic import Problem, split_of
from lrm_fast.data.grader import grade
from lrm_fast.data.long_arithmetic import (
    generate_problems,
    make_problem,
    parse,
    solutions,
    teacher_solution,
)
from lrm_fast.data.prompts import prompt_template
from lrm_fast.data.sources import builtin_task, load_examples
from lrm_fast.data.tokenizer import ALPHABET, MARKER_TOKENS, build_tokenizer
from lrm_fast.levers.rewards import repetition_penalties

DEFAULT = LongDifficultyConfig()
# Reference response tokens at the default settings (5,000 training problems of seed 0): min, 10th
# percentile, median, 90th percentile, max; the module docstring states them.
LENGTHS = [66, 105, 399, 1199, 1589]
# Small multipliers, so that the tests which look at every line stay fast; three digits exercise more.
SHORT = LongDifficultyConfig(min_multiplier=1, max_multiplier=12, max_digits=3)

SOLUTION = re.compile(r"<think>(.*)</think>\\boxed\{(-?\d+)\}", re.DOTALL)
STEP = re.compile(r"(-?\d+)([-+])(\d+)=(-?\d+)")


def _lines(solution: str) -> list[list[str]]:
    """The words of each line of the think block."""
    return [line.split() for line in SOLUTION.fullmatch(solution)[1].split("\n")]


def _holds(step: str) -> bool:
    a, operator, b, value = STEP.fullmatch(step).groups()
    return int(a) + (int(b) if operator == "+" else -int(b)) == int(value)


def check_solution(problem: Problem, solution: str) -> None:
    """The oracle: one line per step, every step holds and starts from the value before it, every check
    is the step's inverse, each line ends with what is left to add, and the answer is Python's."""
    match = SOLUTION.fullmatch(solution)
    assert match, solution
    assert match[2] == problem.answer == str(eval(problem.problem))
    chain = parse(problem.problem)
    lines = _lines(solution)
    assert len(lines) == chain.multiplier
    value = chain.start
    for k, words in enumerate(lines):
        step, *extra = words
        a, operator, b, result = STEP.fullmatch(step).groups()
        assert (int(a), operator, int(b)) == (value, chain.operator, chain.term) and _holds(step), step
        left = chain.multiplier - k - 1
        if left:
            assert extra and extra.pop() == f"{operator}{b}*{left}", words
        for check in extra:
            inverse = "-" if operator == "+" else "+"
            assert check == f"{result}{inverse}{b}={a}", words
        value = int(result)
    assert grade(solution, problem.answer)


def response_tokens(solution: str) -> int:
    """Tokens of a response with the character tokenizer: characters, each marker one token, and EOS."""
    return len(solution) - sum(len(marker) - 1 for marker in MARKER_TOKENS) + 1


def test_reference_solution_of_a_small_problem():
    problem = make_problem("17+8*4")
    assert problem.answer == "49"
    assert problem.solution == "<think>17+8=25 +8*3\n25+8=33 +8*2\n33+8=41 +8*1\n41+8=49</think>\\boxed{49}"
    assert make_problem("95+7*2").solution == "<think>95+7=102 +7*1\n102+7=109</think>\\boxed{109}"
    assert make_problem("4+0*1").solution == "<think>4+0=4</think>\\boxed{4}"


@pytest.mark.parametrize("settings", [SHORT, DEFAULT], ids=["short", "default"])
def test_every_reference_and_stored_solution_is_correct_and_graded_correct(settings):
    for problem in generate_problems(100, split="train", seed=0, settings=settings):
        stored = solutions(problem, 4)
        assert stored[0] == problem.solution
        assert len(set(stored)) == len(stored)
        if parse(problem.problem).multiplier >= 3:  # 3 steps: 64 writings with or without checks, spaces
            assert len(stored) == 4
        for solution in stored:
            check_solution(problem, solution)


def test_the_alphabet_is_the_arithmetic_tasks():
    tokenizer = build_tokenizer()
    problem = generate_problems(1, split="train", seed=0, settings=DEFAULT)[0]
    variants = solutions(problem, 4)
    assert set("".join([problem.problem, *variants])) - set("<think>/\\boxed{") <= set(ALPHABET)
    for text in (problem.problem, *variants):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert len(tokenizer(variants[0] + tokenizer.eos_token)["input_ids"]) == response_tokens(variants[0])


def test_same_seed_same_problems_other_seed_other_problems():
    first = generate_problems(200, split="train", seed=3, settings=DEFAULT)
    assert first == generate_problems(200, split="train", seed=3, settings=DEFAULT)
    assert first != generate_problems(200, split="train", seed=4, settings=DEFAULT)
    assert len({p.problem for p in first}) == len({p.id for p in first}) == 200
    assert make_problem(first[0].problem) == first[0]


def test_splits_are_disjoint_for_any_seeds():
    # 8,000 texts in all: the draws of different seeds overlap, so disjointness is not luck.
    settings = LongDifficultyConfig(min_multiplier=1, max_multiplier=40, max_digits=1)
    train = generate_problems(3000, split="train", seed=0, settings=settings)
    held_out = generate_problems(200, split="held_out", seed=0, settings=settings)
    held_out += generate_problems(200, split="held_out", seed=1, settings=settings)
    assert not {p.problem for p in train} & {p.problem for p in held_out}
    assert all(split_of(p.problem, settings.held_out_fraction) == "train" for p in train)
    assert all(split_of(p.problem, settings.held_out_fraction) == "held_out" for p in held_out)


def test_difficulty_knobs():
    settings = LongDifficultyConfig(min_multiplier=5, max_multiplier=5, min_digits=2, max_digits=2)
    for problem in generate_problems(300, split="train", seed=0, settings=settings):
        chain = parse(problem.problem)
        assert chain.multiplier == 5 and 10 <= chain.start <= 99 and 1 <= chain.term <= 9
        assert chain.operator == "+"


def test_length_distribution_is_the_documented_one():
    # The module docstring's figures: 5,000 training problems of seed 0 at the default settings.
    problems = generate_problems(5000, split="train", seed=0, settings=DEFAULT)
    lengths = sorted(response_tokens(p.solution) for p in problems)
    at = [lengths[round(q * (len(lengths) - 1))] for q in (0.0, 0.1, 0.5, 0.9, 1.0)]
    assert at == LENGTHS


def test_length_grows_with_difficulty():
    medians = []
    for low, high in [(2, 16), (6, 100), (16, 200)]:
        settings = LongDifficultyConfig(min_multiplier=low, max_multiplier=high)
        problems = generate_problems(500, split="train", seed=0, settings=settings)
        medians.append(statistics.median(response_tokens(p.solution) for p in problems))
    assert medians[0] < 120 < 300 < medians[1] < 500 < 700 < medians[2]
    # At one multiplier, longer start values make longer lines.
    one, three = (
        generate_problems(
            50, split="train", seed=0, settings=LongDifficultyConfig(20, 20, min_digits=d, max_digits=d)
        )
        for d in (1, 3)
    )
    assert min(response_tokens(p.solution) for p in three) > max(response_tokens(p.solution) for p in one)


def test_teacher_without_slips_checks_or_spaces_writes_the_reference_solution():
    rng = random.Random(0)
    for problem in generate_problems(200, split="train", seed=3, settings=SHORT):
        assert teacher_solution(problem, rng) == problem


def test_teacher_slips_change_one_step_carry_the_error_and_grade_wrong():
    rng = random.Random(1)
    problems = generate_problems(1000, split="train", seed=4, settings=SHORT)
    taught = [teacher_solution(p, rng, slip_prob=0.3) for p in problems]
    wrong = [(p, t) for p, t in zip(problems, taught, strict=True) if t.answer != p.answer]
    assert 0.25 < len(wrong) / len(problems) < 0.35  # a changed digit always changes the sum
    for problem, t in wrong:
        steps = [words[0] for words in _lines(t.solution)]
        assert sum(not _holds(step) for step in steps) == 1  # one wrong step, the rest computed from it
        assert all(
            int(STEP.fullmatch(b)[1]) == int(STEP.fullmatch(a)[4]) for a, b in itertools.pairwise(steps)
        )
        assert len(steps) == len(_lines(problem.solution))
        assert grade(t.solution, t.answer) and not grade(t.solution, problem.answer)


def test_teacher_checks_and_spaces_vary_length_and_keep_the_answer():
    rng = random.Random(2)
    problems = generate_problems(300, split="train", seed=5, settings=SHORT)
    taught = [teacher_solution(p, rng, check_prob=0.5, space_prob=0.5) for p in problems]
    for problem, t in zip(problems, taught, strict=True):
        check_solution(problem, t.solution)
    lines = sum(len(_lines(p.solution)) for p in problems)
    checks = sum(len(words) for t in taught for words in _lines(t.solution)) - sum(
        len(words) for p in problems for words in _lines(p.solution)
    )
    spaces = sum(
        line.startswith(" ") for t in taught for line in SOLUTION.fullmatch(t.solution)[1].split("\n")
    )
    assert 0.4 < checks / lines < 0.6 and 0.4 < spaces / lines < 0.6
    assert len({len(t.solution) - len(p.solution) for p, t in zip(problems, taught, strict=True)}) > 10


def test_repetition_reward_fires_on_a_looping_response_not_on_a_reference():
    # The study's setting: -2 for a fully repeated response, word 40-grams of prompt + response text.
    problem = make_problem("17+8*22")  # 22 lines, 43 words
    prompt = f"<|user|>{problem.problem}<|im_end|><|assistant|>"
    first_lines = problem.solution.split("\n")[:3]
    looping = "\n".join(first_lines + [first_lines[-1]] * 60)  # stuck on one line up to the limit
    reference, loop = repetition_penalties(
        [prompt + problem.solution, prompt + looping], [False, False], n=40, max_penalty=-2.0
    )
    assert len((prompt + problem.solution).split()) > 40  # so the reference has 40-grams to count
    assert reference == 0.0
    assert loop < -1.5


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"min_multiplier": 0}, "min_multiplier/max_multiplier"),
        ({"min_multiplier": 9, "max_multiplier": 8}, "min_multiplier/max_multiplier"),
        ({"max_digits": 7}, "min_digits/max_digits"),
        ({"held_out_fraction": 1.0}, "held_out_fraction"),
    ],
)
def test_bad_settings_raise_naming_the_setting(kwargs, named):
    with pytest.raises(ValueError, match=f"^{named} must be"):
        generate_problems(1, split="train", seed=0, settings=LongDifficultyConfig(**kwargs))


def test_impossible_requests_and_bad_text_raise():
    # 90 texts "c+b*2" of single digits, about 9 of them held out.
    narrow = LongDifficultyConfig(min_multiplier=2, max_multiplier=2, max_digits=1)
    with pytest.raises(ValueError, match="distinct held_out problems"):
        generate_problems(100, split="held_out", seed=0, settings=narrow)
    with pytest.raises(ValueError, match="split"):
        generate_problems(5, split="test", seed=0, settings=narrow)
    for text in ("2*3+4", "1+2+3", "5+3*0", "5-3*2"):
        with pytest.raises(ValueError, match="not a problem"):
            make_problem(text)


def test_a_run_on_the_long_task_gets_its_splits_with_stored_solutions_and_bare_prompts():
    data = DataConfig(name=DataSource.long_arithmetic, train_problems=50)
    train, heldout = load_examples(data, num_heldout=20)
    assert (len(train), len(heldout)) == (50, 20)
    assert not {e.problem for e in train} & {e.problem for e in heldout}
    for example in train + heldout:
        assert example.id.startswith("long-") and len(example.solutions) == 4
        assert all(grade(solution, example.answer) for solution in example.solutions)
    assert builtin_task(data) is data.long_difficulty
    assert prompt_template(data) == "{problem}"
