r"""Built-in long reasoning task: a one-digit term added to a start value many times, one addition a line.

A problem is ``c+b*a`` with a start value c of 1-2 digits, a one-digit term b (1-9) and a multiplier a,
say ``17+8*4``. Its reference solution adds b to c, a times, one step a line; each line holds the step
and then, after a space, what is left to add (none after the last)::

    <think>17+8=25 +8*3
    25+8=33 +8*2
    33+8=41 +8*1
    41+8=49</think>\boxed{49}

The response grows with the multiplier, so a short prompt asks for a long response, as in long
chain-of-thought reasoning, and one error anywhere carries to a wrong answer, so longer problems are
harder. Every token of a line follows from the line before it (the value just computed, the term, the
count less one) or from adding one digit, so a small model can learn to copy and add and never has to
find its place in a long text. (Two earlier versions failed that test: rewriting the rest of a chain of
operands on every line, and two-digit terms. After 300 SFT steps the tiny model solved almost nothing
of either: long runs of few distinct characters are hard to copy, and a carry out of two digits is hard
to foresee when the digits are written left to right.) Steps, rests and checks are separate words (white
space between them), so a response that loops repeats word n-grams and the repetition reward sees it.
The alphabet is the arithmetic task's (digits, ``+ - *``, ``=``, space, newline), so both tasks share
the character tokenizer.

At the default settings (multipliers 6-100 drawn log-uniformly, start values of 1-2 digits) a reference
response (character tokens, the markers ``<think> </think> \boxed{`` one token each, and the
end-of-sequence token) is 66 tokens at least, 105 at the 10th percentile, 399 at the median, 1,199 at
the 90th percentile and 1,589 at most, counted on 5,000 training problems of seed 0. Lines grow by a
character as the value gains a digit; a line is 14 tokens at 2-digit values.

Simplifications, on purpose:

- One operator, addition, and a one-digit term: every step is the same kind of addition, which is what
  keeps a line predictable from the line before.
- The stored solutions of offline sample injection are not other orders, as the arithmetic task's are
  (there is only one), but other correct writings: the teacher's, without slips.
- Split by hash, as in the arithmetic task (`split_of`), so train and held-out sets drawn with any seeds
  are disjoint; problems within one call are distinct.

``teacher_solution`` writes a solution the way the SFT cold start's teacher does (as in the arithmetic
task): with probability ``slip_prob`` one step's result has one digit wrong and the error carries through
every later line to a wrong answer; after each other step, with probability ``check_prob``, the step is
checked by its inverse as a word of its own (``17+8=25 25-8=17``); with probability ``space_prob`` a
line starts with a space. Checks and spaces change no value, so correct responses to one problem differ
in length, which the length levers act on.
"""

import hashlib
import math
import random
import re
from dataclasses import dataclass

from lrm_fast.config import LongDifficultyConfig, check_long_difficulty
from lrm_fast.data.arithmetic import SPLITS, Problem, distinct_texts, slip

# Check probability and space probability of the stored solutions after the reference.
BANK_CHECK_PROB = 0.2
BANK_SPACE_PROB = 0.5


@dataclass(frozen=True)
class Chain:
    """A parsed problem ``c+b*a``: start value, operator, term, multiplier."""

    start: int
    operator: str
    term: int
    multiplier: int


def generate_problems(n: int, *, split: str, seed: int, settings: LongDifficultyConfig) -> list[Problem]:
    """`n` distinct problems of `split`, the same list for the same (seed, settings)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    check_long_difficulty(settings)
    rng = random.Random(seed)
    texts = distinct_texts(
        n, split, settings.held_out_fraction, lambda: _sample_text(rng, settings), settings
    )
    return [make_problem(text) for text in texts]


def make_problem(text: str) -> Problem:
    """The problem of a text ``c+b*a``, with its reference solution."""
    solution, answer = _write(parse(text), checks=set(), spaces=set())
    problem_id = "long-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return Problem(id=problem_id, problem=text, answer=answer, solution=solution)


def solutions(problem: Problem, k: int) -> list[str]:
    """Up to `k` distinct correct solutions: the reference, then the teacher's without slips (with
    checks and spaces, so of other lengths), each drawn from a generator seeded by the problem's id."""
    found = [problem.solution]
    for i in range(4 * k):
        if len(found) >= k:
            break
        rng = random.Random(f"{problem.id}:{i}")
        variant = teacher_solution(problem, rng, check_prob=BANK_CHECK_PROB, space_prob=BANK_SPACE_PROB)
        if variant.solution not in found:
            found.append(variant.solution)
    return found[:k]


def teacher_solution(
    problem: Problem,
    rng: random.Random,
    slip_prob: float = 0.0,
    check_prob: float = 0.0,
    space_prob: float = 0.0,
) -> Problem:
    """`problem` with the solution an imperfect, verbose teacher writes (see the module docstring);
    its `answer` is the teacher's final value, wrong after a slip."""
    chain = parse(problem.problem)
    steps = range(chain.multiplier)
    slip_step = rng.randrange(chain.multiplier) if rng.random() < slip_prob else None
    checks = {k for k in steps if k != slip_step and rng.random() < check_prob}
    spaces = {k for k in steps if rng.random() < space_prob}
    solution, answer = _write(chain, checks, spaces, slip_step, rng)
    return Problem(problem.id, problem.problem, answer, solution)


def _write(
    chain: Chain,
    checks: set[int],
    spaces: set[int],
    slip_step: int | None = None,
    rng: random.Random | None = None,
) -> tuple[str, str]:
    """(solution, answer): one line per step, with a check after the steps in `checks`, a leading space
    on the lines in `spaces`, and the result of step `slip_step` slipped (one digit, drawn with `rng`)."""
    op, b = chain.operator, chain.term
    value, lines = chain.start, []
    for k in range(chain.multiplier):
        result = value + b if op == "+" else value - b
        if k == slip_step:
            result = slip(result, rng)
        words = [f"{value}{op}{b}={result}"]
        if k in checks:
            inverse = "-" if op == "+" else "+"
            words.append(f"{result}{inverse}{b}={value}")
        left = chain.multiplier - k - 1
        if left:
            words.append(f"{op}{b}*{left}")
        lines.append((" " if k in spaces else "") + " ".join(words))
        value = result
    body = "\n".join(lines)
    return f"<think>{body}</think>\\boxed{{{value}}}", str(value)


def parse(text: str) -> Chain:
    """The parts of a problem text ``c+b*a`` (non-negative integers, a >= 1; the generator's b is one digit,
    any b is solved)."""
    match = re.fullmatch(r"(\d+)(\+)(\d+)\*(\d+)", text)
    if match is None or int(match[4]) < 1:
        raise ValueError(f"not a problem c+b*a with a >= 1: {text!r}")
    return Chain(int(match[1]), match[2], int(match[3]), int(match[4]))


def _sample_text(rng: random.Random, settings: LongDifficultyConfig) -> str:
    low, high = settings.min_multiplier, settings.max_multiplier
    # Log-uniform: as many multipliers in 8-24 as in 24-72, so lengths spread evenly on a log scale (a
    # long tail of long responses) rather than crowding at the top of the range. min(): uniform() may
    # return its upper bound.
    multiplier = min(int(math.exp(rng.uniform(math.log(low), math.log(high + 1)))), high)
    return f"{_sample_number(rng, settings)}+{rng.randint(1, 9)}*{multiplier}"


def _sample_number(rng: random.Random, settings: LongDifficultyConfig) -> int:
    # Digits first, then the value, as in the arithmetic task: 1-digit numbers are not drowned out.
    digits = rng.randint(settings.min_digits, settings.max_digits)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)
