r"""Built-in verifiable arithmetic task: integer expressions with a step-wise reference solution.

A problem is an expression such as ``12+3*4-5`` over ``+ - *`` with non-negative operands,
optionally with one pair of parentheses. Its reference solution applies one operation per step,
innermost parentheses and products first, then sums left to right, in the study's reasoning
format::

    <think>3*4=12,12+12=24,24-5=19</think>\boxed{19}

Each step names both operands, so a small model only has to copy two numbers and compute one
operation per step; it never has to rewrite the remaining expression.

With the default settings a reference response (with the end-of-sequence token, character tokens)
is 27 tokens on average, 39 at the 90th percentile, 48 at the 99th, 57 at most: a rollout limit
of 40 new tokens would cut 8% of the correct responses.

Simplifications, on purpose:

- No division: exact-division problems would skew the operand distribution, and inexact ones would
  need fractions in the trace.
- Split by hash: a problem is held out iff the SHA-256 of its text falls below
  ``held_out_fraction``. The split of a problem never depends on the seed or on the order of
  generation, so train and held-out sets drawn with any seeds are disjoint.
- Problems within one call are distinct, so ``n`` is bounded by the number of distinct problems of
  the split (a ``ValueError`` says so when the settings are too narrow).

``solutions(problem, k)`` gives up to ``k`` distinct correct traces (other valid orders of the same
operations); they serve as the offline solution bank of offline sample injection.

``teacher_solution`` writes a solution the way the SFT cold start's teacher does, standing in for the
study's R1-distilled starting point: imperfect (with probability ``slip_prob`` one step's result is off
by one digit, and the error carries through to a wrong answer) and verbose (after each step, with
probability ``check_prob``, the step computed again, ``3*4=12,4*3=12`` or ``9-5=4,9-5=4``; and with
probability ``space_prob`` a space after ``<think>`` and after each comma). The slips give the cold start
errors that reinforcement learning can remove; checks and spaces make correct responses to the same
problem differ in length, which the relative length reward acts on. Spaces change no step, so a binary
reward has no reason to remove them, whereas GRPO soon drops the checks (a repeated step is one more
chance to slip).
"""

import hashlib
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from lrm_fast.config import DifficultyConfig, check_difficulty

OPERATORS = "+-*"

# A token of an expression: an integer operand or one of the characters + - * ( ).
Token = int | str


@dataclass(frozen=True)
class Problem:
    """One problem: `problem` is the prompt text, `solution` the reference response."""

    id: str
    problem: str
    answer: str
    solution: str


SPLITS = ("train", "held_out")


def split_of(text: str, held_out_fraction: float) -> str:
    """The split a problem text belongs to, decided by its hash alone."""
    digest = hashlib.sha256(text.encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "held_out" if position < held_out_fraction else "train"


def generate_problems(n: int, *, split: str, seed: int, settings: DifficultyConfig) -> list[Problem]:
    """`n` distinct problems of `split`, the same list for the same (seed, settings)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    check_difficulty(settings)
    rng = random.Random(seed)
    texts = distinct_texts(
        n, split, settings.held_out_fraction, lambda: render(_sample_tokens(rng, settings)), settings
    )
    return [make_problem(text) for text in texts]


def distinct_texts(
    n: int, split: str, held_out_fraction: float, draw: Callable[[], str], settings: object
) -> list[str]:
    """`n` distinct texts of `split`, in the order `draw` first gives them (`settings` only names the
    settings in the error of a request they cannot meet)."""
    texts: dict[str, None] = {}
    # Rejection sampling: about 1 in (1 / held_out_fraction) draws lands in the held-out split,
    # and narrow settings repeat texts; the bound turns an impossible request into an error.
    max_draws, draws = 200 * n + 10_000, 0
    while len(texts) < n:
        if draws == max_draws:
            raise ValueError(
                f"found only {len(texts)} distinct {split} problems in {max_draws} draws, asked for {n}: "
                f"widen the settings ({settings})"
            )
        draws += 1
        text = draw()
        if text not in texts and split_of(text, held_out_fraction) == split:
            texts[text] = None
    return list(texts)


def make_problem(text: str) -> Problem:
    """The problem of an expression text, with its canonical solution."""
    tokens = parse(text)
    trace = next(_traces(tokens))
    answer = str(evaluate(tokens))
    problem_id = "arith-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return Problem(id=problem_id, problem=text, answer=answer, solution=format_solution(trace, answer))


def solutions(problem: Problem, k: int) -> list[str]:
    """Up to `k` distinct correct solutions; the first is `problem.solution`.

    The variants apply the same operations in other valid orders (e.g. the second product first).
    Fewer than `k` come back when the problem has fewer distinct orders.
    """
    found: list[str] = []
    for trace in _traces(parse(problem.problem)):
        solution = format_solution(trace, problem.answer)
        if solution not in found:
            found.append(solution)
        if len(found) == k:
            break
    return found


def teacher_solution(
    problem: Problem,
    rng: random.Random,
    slip_prob: float = 0.0,
    check_prob: float = 0.0,
    space_prob: float = 0.0,
) -> Problem:
    """`problem` with the solution an imperfect, verbose teacher writes (see the module docstring);
    its `answer` is the teacher's final value, wrong after a slip."""
    tokens = parse(problem.problem)
    num_steps = sum(isinstance(token, str) and token in OPERATORS for token in tokens)
    slip_step = rng.randrange(num_steps) if rng.random() < slip_prob else None
    steps: list[str] = []
    for step in range(num_steps):
        i = _choices(tokens)[0]
        a, operator, b = tokens[i - 1], tokens[i], tokens[i + 1]
        value = _value(a, operator, b)
        if step == slip_step:
            value = slip(value, rng)
        tokens = _reduce(tokens, i, value)
        steps.append(f"{a}{operator}{b}={value}")
        if step != slip_step and rng.random() < check_prob:
            steps.append(_check(a, operator, b, value))
    answer = str(tokens[0])
    # Optional spaces after <think> and after each comma: length that no correctness depends on.
    spaced = [(" " if rng.random() < space_prob else "") + step for step in steps]
    return Problem(
        problem.id, problem.problem, answer, f"<think>{','.join(spaced)}</think>\\boxed{{{answer}}}"
    )


def slip(value: int, rng: random.Random) -> int:
    """`value` with one digit changed (never a leading zero)."""
    digits = str(abs(value))
    i = rng.randrange(len(digits))
    choices = [d for d in "0123456789" if d != digits[i] and not (i == 0 and d == "0" and len(digits) > 1)]
    wrong = int(digits[:i] + rng.choice(choices) + digits[i + 1 :])
    return -wrong if value < 0 else wrong


def _check(a: int, operator: str, b: int, value: int) -> str:
    """A step computed again: sums and products with the operands swapped, differences as they were.

    The check ends with the step's own value, so the next step goes on from the last number written."""
    if operator == "-":
        return f"{a}-{b}={value}"
    return f"{b}{operator}{a}={value}"


def format_solution(steps: list[str], answer: str) -> str:
    """The response text: the comma-separated steps in a think block, then the boxed answer."""
    return f"<think>{','.join(steps)}</think>\\boxed{{{answer}}}"


def parse(text: str) -> list[Token]:
    """Tokens of an expression text: non-negative integers and the characters + - * ( )."""
    pieces = re.findall(r"\d+|[-+*()]|\S", text.replace(" ", ""))
    tokens: list[Token] = []
    for piece in pieces:
        if piece.isdigit():
            tokens.append(int(piece))
        elif piece in "+-*()":
            tokens.append(piece)
        else:
            raise ValueError(f"unexpected character {piece!r} in expression {text!r}")
    return tokens


def render(tokens: list[Token]) -> str:
    return "".join(str(token) for token in tokens)


def evaluate(tokens: list[Token]) -> int:
    """The value of an expression, by applying the canonical steps until one number remains."""
    while len(tokens) > 1:
        tokens, _ = _apply(tokens, _choices(tokens)[0])
    return tokens[0]


def _sample_tokens(rng: random.Random, settings: DifficultyConfig) -> list[Token]:
    n = rng.randint(settings.min_operands, settings.max_operands)
    tokens: list[Token] = [_sample_operand(rng, settings)]
    for _ in range(n - 1):
        tokens += [rng.choice(settings.operators), _sample_operand(rng, settings)]
    if n > 2 and rng.random() < settings.parentheses_prob:
        # A span of 2..n-1 operands: parentheses around the whole expression would say nothing.
        length = rng.randint(2, n - 1)
        first = rng.randint(0, n - length)
        last = first + length - 1
        tokens = [*tokens[: 2 * first], "(", *tokens[2 * first : 2 * last + 1], ")", *tokens[2 * last + 1 :]]
    return tokens


def _sample_operand(rng: random.Random, settings: DifficultyConfig) -> int:
    # Digits first, then the value: otherwise 2-digit operands would outnumber 1-digit ones 9 to 1.
    digits = rng.randint(settings.min_digits, settings.max_digits)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def _reducible(tokens: list[Token]) -> list[int]:
    """Positions of the operators that can be applied next without changing the value.

    A product of two adjacent numbers always can (no division, so a*b*c = a*(b*c)). A sum or
    difference can when nothing binds tighter on either side and it is not the right operand of
    a subtraction: x-a+b is not x-(a+b).
    """
    positions = []
    for i, token in enumerate(tokens):
        if (
            not isinstance(token, str)
            or token not in OPERATORS
            or not (isinstance(tokens[i - 1], int) and isinstance(tokens[i + 1], int))
        ):
            continue
        before = tokens[i - 2] if i >= 2 else None
        after = tokens[i + 2] if i + 2 < len(tokens) else None
        if token == "*" or (before in (None, "(", "+") and after in (None, ")", "+", "-")):
            positions.append(i)
    return positions


def _choices(tokens: list[Token]) -> list[int]:
    """The reducible positions, products first: the first one is the canonical next step."""
    positions = _reducible(tokens)
    return [i for i in positions if tokens[i] == "*"] + [i for i in positions if tokens[i] != "*"]


def _apply(tokens: list[Token], i: int) -> tuple[list[Token], str]:
    """The tokens after applying the operator at `i`, and the step text ``a*b=c``."""
    a, operator, b = tokens[i - 1], tokens[i], tokens[i + 1]
    value = _value(a, operator, b)
    return _reduce(tokens, i, value), f"{a}{operator}{b}={value}"


def _value(a: int, operator: str, b: int) -> int:
    return a + b if operator == "+" else a - b if operator == "-" else a * b


def _reduce(tokens: list[Token], i: int, value: int) -> list[Token]:
    """The tokens with the operation at `i` replaced by `value` (and parentheses around it dropped)."""
    reduced = [*tokens[: i - 1], value, *tokens[i + 2 :]]
    j = i - 1
    if 0 < j < len(reduced) - 1 and reduced[j - 1] == "(" and reduced[j + 1] == ")":
        reduced = [*reduced[: j - 1], value, *reduced[j + 2 :]]
    return reduced


def _traces(tokens: list[Token]) -> Iterator[list[str]]:
    """Every valid order of steps, depth first, the canonical order (products first) first."""
    if len(tokens) == 1:
        yield []
        return
    for i in _choices(tokens):
        reduced, step = _apply(tokens, i)
        for rest in _traces(reduced):
            yield [step, *rest]
