"""The arithmetic task: determinism, disjoint splits, difficulty knobs, correct solutions."""

import random
import re

import pytest

from lrm_fast.config import DifficultyConfig
from lrm_fast.data.arithmetic import (
    Problem,
    generate_problems,
    make_problem,
    solutions,
    split_of,
    teacher_solution,
)

# Up to two digits per operand (the embedded run uses one): more of the generator is exercised.
DEFAULT = DifficultyConfig(max_digits=2)
WITH_PARENTHESES = DifficultyConfig(max_operands=5, parentheses_prob=0.7)

SOLUTION = re.compile(r"<think>(.*)</think>\\boxed\{(-?\d+)\}")
STEP = re.compile(r"(-?\d+)([-+*])(-?\d+)=(-?\d+)")


def check_solution(problem: Problem, solution: str) -> None:
    """The oracle: format, every step's arithmetic, one step per operator, final value = answer.

    The answer itself is checked against Python's own evaluation of the expression.
    """
    match = SOLUTION.fullmatch(solution)
    assert match, solution
    trace, boxed = match.groups()
    assert boxed == problem.answer == str(eval(problem.problem))
    steps = trace.split(",")
    assert len(steps) == sum(problem.problem.count(op) for op in "+-*")
    for step in steps:
        a, op, b, c = STEP.fullmatch(step).groups()
        a, b, c = int(a), int(b), int(c)
        assert c == {"+": a + b, "-": a - b, "*": a * b}[op], step
    assert int(STEP.fullmatch(steps[-1]).group(4)) == int(problem.answer)


def test_same_seed_same_problems_other_seed_other_problems():
    first = generate_problems(200, split="train", seed=3, settings=DEFAULT)
    assert first == generate_problems(200, split="train", seed=3, settings=DEFAULT)
    assert first != generate_problems(200, split="train", seed=4, settings=DEFAULT)


@pytest.mark.parametrize("settings", [DEFAULT, WITH_PARENTHESES], ids=["default", "parentheses"])
def test_splits_are_disjoint_for_any_seeds(settings):
    train = generate_problems(3000, split="train", seed=0, settings=settings)
    held_out = generate_problems(300, split="held_out", seed=0, settings=settings)
    held_out += generate_problems(300, split="held_out", seed=1, settings=settings)
    assert not {p.problem for p in train} & {p.problem for p in held_out}
    assert all(split_of(p.problem, settings.held_out_fraction) == "train" for p in train)
    assert all(split_of(p.problem, settings.held_out_fraction) == "held_out" for p in held_out)


def test_problems_of_one_call_are_distinct_and_ids_follow_the_text():
    problems = generate_problems(1000, split="held_out", seed=0, settings=DEFAULT)
    assert len({p.problem for p in problems}) == len({p.id for p in problems}) == 1000
    assert make_problem(problems[0].problem) == problems[0]


def test_held_out_fraction_is_respected():
    texts = [f"{a}+{b}*{c}" for a in range(20) for b in range(20) for c in range(20)]
    fraction = sum(split_of(t, 0.1) == "held_out" for t in texts) / len(texts)
    assert 0.08 < fraction < 0.12


@pytest.mark.parametrize("settings", [DEFAULT, WITH_PARENTHESES], ids=["default", "parentheses"])
def test_every_solution_is_correct(settings):
    for problem in generate_problems(2000, split="train", seed=0, settings=settings):
        check_solution(problem, problem.solution)


def test_parentheses_appear_and_change_the_order():
    problems = generate_problems(500, split="train", seed=0, settings=WITH_PARENTHESES)
    assert any("(" in p.problem for p in problems)
    problem = make_problem("(1+2)*3")
    assert problem.solution == "<think>1+2=3,3*3=9</think>\\boxed{9}"
    check_solution(problem, problem.solution)


def test_canonical_trace_does_products_first_then_left_to_right():
    problem = make_problem("2*3+4*5-6")
    assert problem.answer == "20"
    assert problem.solution == "<think>2*3=6,4*5=20,6+20=26,26-6=20</think>\\boxed{20}"


def test_negative_intermediate_results():
    problem = make_problem("3-15+4")
    assert problem.solution == "<think>3-15=-12,-12+4=-8</think>\\boxed{-8}"


def test_solution_variants_are_distinct_correct_and_start_with_the_canonical():
    for text in ["2*3+4*5-6", "1-2+3-4", "1+2+3+4", "(1+2*3)*4+5", "12*3"]:
        problem = make_problem(text)
        variants = solutions(problem, 10)
        assert variants[0] == problem.solution
        assert len(set(variants)) == len(variants)
        for variant in variants:
            check_solution(problem, variant)
    # a-b+c must never become a-(b+c); 1+2+3+4 has 3! orders, a single operation only one.
    assert len(solutions(make_problem("1-2+3-4"), 10)) == 3
    assert len(solutions(make_problem("1+2+3+4"), 10)) == 6
    assert len(solutions(make_problem("1+2+3+4"), 4)) == 4
    assert solutions(make_problem("12*3"), 5) == [make_problem("12*3").solution]


def test_difficulty_knobs():
    settings = DifficultyConfig(min_operands=3, max_operands=3, min_digits=2, max_digits=2, operators="+")
    for problem in generate_problems(300, split="train", seed=0, settings=settings):
        operands = problem.problem.split("+")
        assert len(operands) == 3
        assert all(10 <= int(x) <= 99 and len(x) == 2 for x in operands)


def test_default_digit_counts_are_balanced():
    # Digits are drawn before values, so 1-digit operands are about half, not a tenth.
    operands = [
        x
        for p in generate_problems(1000, split="train", seed=0, settings=DEFAULT)
        for x in re.findall(r"\d+", p.problem)
    ]
    share = sum(len(x) == 1 for x in operands) / len(operands)
    assert 0.4 < share < 0.6


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"min_operands": 1}, "min_operands/max_operands"),
        ({"min_operands": 3, "max_operands": 2}, "min_operands/max_operands"),
        ({"max_digits": 0}, "min_digits/max_digits"),
        ({"operators": "/"}, "operators"),
        ({"operators": ""}, "operators"),
        ({"parentheses_prob": 1.5}, "parentheses_prob"),
        ({"held_out_fraction": 0.0}, "held_out_fraction"),
    ],
)
def test_bad_settings_raise_naming_the_setting(kwargs, named):
    with pytest.raises(ValueError, match=f"^{named} must be"):
        generate_problems(1, split="train", seed=0, settings=DifficultyConfig(**kwargs))


def test_asking_for_more_problems_than_exist_raises():
    # 100 texts "a+b" of single digits, about 10 of them held out.
    settings = DifficultyConfig(max_operands=2, max_digits=1, operators="+")
    with pytest.raises(ValueError, match="distinct held_out problems"):
        generate_problems(50, split="held_out", seed=0, settings=settings)
    with pytest.raises(ValueError, match="split"):
        generate_problems(5, split="test", seed=0, settings=settings)


def test_teacher_without_slips_or_checks_writes_the_reference_solution():
    rng = random.Random(0)
    for problem in generate_problems(200, split="train", seed=3, settings=DEFAULT):
        assert teacher_solution(problem, rng) == problem


def _steps(solution: str) -> list[str]:
    return solution.removeprefix("<think>").split("</think>")[0].split(",")


def _holds(step: str) -> bool:
    a, operator, b, value = STEP.fullmatch(step).groups()
    a, b = int(a), int(b)
    return (a + b if operator == "+" else a - b if operator == "-" else a * b) == int(value)


def test_teacher_slips_change_one_step_and_carry_the_error_to_the_answer():
    rng = random.Random(1)
    problems = generate_problems(2000, split="train", seed=4, settings=DEFAULT)
    taught = [teacher_solution(p, rng, slip_prob=0.3) for p in problems]
    wrong = [(p, t) for p, t in zip(problems, taught, strict=True) if t.answer != p.answer]
    assert 0.25 < len(wrong) / len(problems) < 0.35  # a changed digit always changes the value
    for problem, t in wrong:
        steps = _steps(t.solution)
        assert sum(not _holds(step) for step in steps) == 1  # one wrong step, the rest computed from it
        assert len(steps) == len(_steps(problem.solution))
        assert t.solution.endswith(f"\\boxed{{{t.answer}}}")
        assert steps[-1].rsplit("=", 1)[1] == t.answer


def test_teacher_checks_repeat_true_steps_and_vary_lengths():
    rng = random.Random(2)
    problems = generate_problems(500, split="train", seed=5, settings=DEFAULT)
    taught = [teacher_solution(p, rng, check_prob=0.5) for p in problems]
    assert all(t.answer == p.answer for p, t in zip(problems, taught, strict=True))
    extra = [len(_steps(t.solution)) - len(_steps(p.solution)) for p, t in zip(problems, taught, strict=True)]
    assert min(extra) == 0 and max(extra) >= 2
    assert all(_holds(step) for t in taught for step in _steps(t.solution))
    assert 0.4 < sum(extra) / sum(len(_steps(p.solution)) for p in problems) < 0.6


def test_teacher_spaces_vary_length_and_nothing_else():
    rng = random.Random(3)
    problems = generate_problems(500, split="train", seed=6, settings=DEFAULT)
    taught = [teacher_solution(p, rng, space_prob=0.5) for p in problems]
    assert all(t.solution.replace(" ", "") == p.solution for p, t in zip(problems, taught, strict=True))
    spaces = [t.solution.count(" ") for t in taught]
    separators = sum(p.solution.count(",") + 1 for p in problems)  # after <think> and each comma
    assert 0.45 < sum(spaces) / separators < 0.55
