"""Verifiable reward: is the last boxed answer of a response equivalent to the ground truth?

r_i = 1.0 if the content of the last ``\\boxed{}`` of the response's answer section is equivalent to one of
the gold answers (a problem may list several accepted forms), else 0.0. No format reward, as in the study
(PAPER.md §1).

The answer section, two rules (``think_format``):

- off (the default; the built-in task's traces always close their thoughts): the text after the last
  ``</think>``, or the whole text when there is none;
- on (the study's rule, its deepscaler/rewards/math_reward.py:36-39, the grader of its trainer and of every
  evaluation script): a response without ``</think>`` has no answer, so one cut off while reasoning scores
  0 even if it boxed the right answer; otherwise the text between the first ``</think>`` and the next one
  (or the end).

Equivalence is decided in three steps, cheapest first:

1. normalised string equality (spacing, ``\\left``/``\\right``, ``\\dfrac``, ``^\\circ``, ``\\%``, currency
   ``\\$``, a trailing period, a trailing ``\\text{...}`` unit); the gold followed by one more letter is a
   definite "no" (the gold times a variable, even where that product equals it, as 0t = 0);
2. exact rational comparison of plain numbers (integers, decimals, scientific notation ``a \\times 10^{b}``
   or ``aeb``, ``a/b``, ``\\frac{a}{b}``), so the common case never reaches sympy. Two numbers written
   exactly (no fraction) that differ are a definite "no": math-verify would round both to 6 decimal
   places, so 8.224e-19 and 9.224e-19 (both 0.000000) would pass;
3. math-verify (``parse`` + ``verify``) on both answers wrapped in ``\\boxed{}``: symbolic and numeric
   equivalence, sets, intervals, equations. LaTeX extraction only: its plain-expression fallback read an
   answer it could not parse as some number inside it (``\\hbar \\omega(v+1/2) - ...`` as 2). Its unit
   stripping is off: it dropped a bare trailing letter as a unit (``\\frac{n}{2}t`` read as ``\\frac{n}{2}``);
   units written as ``\\text{...}`` are stripped in step 1 instead.

Multiple choice: a gold answer that is a letter A-E (``B``, ``(B)``, ``B.``, or ``(B) 42`` with the
option's text) is compared by letter; a response that boxes the option's text instead of the letter
also counts when the gold answer carries that text.

Where this grader and the study's disagree on purpose (docs/PARITY.md, "Grader"; the table
docs/parity/grader_verdicts.jsonl and tests/data/test_grader_parity.py check the rest agrees): accepted
here, ``x = 3`` for a gold ``$3$``, a reordered sum of three or more letters, ``D.`` for option D; refused
here, numbers below 1e-7 that differ (the study reads them all as 0) and a letter after a unit in text.

Simplifications: only the last box counts, and a last box whose braces never close (a truncated
response) counts as no answer rather than falling back to an earlier box. math-verify's timeouts use
SIGALRM, which only the main thread may set, so outside the main thread they are switched off: a
pathological expression could then run long. ``grade_batch(..., workers>0)`` grades in worker
processes, where the timeouts stay on.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from fractions import Fraction
from functools import partial
from multiprocessing import get_context

from math_verify import LatexExtractionConfig, LatexNormalizationConfig, parse, verify

# math-verify's own per-expression default; only applied in the main thread (see module docstring).
MATH_VERIFY_TIMEOUT_S = 5

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*\{")
_THINK_END = "</think>"

# Box first: the answer arrives already extracted and wrapped in \boxed{}. math-verify's default
# normalisation, less its unit stripping (see the module docstring).
_EXTRACTION_CONFIG = (
    LatexExtractionConfig(
        boxed_match_priority=0,
        normalization_config=LatexNormalizationConfig(
            basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False
        ),
    ),
)

# Removed before comparing strings: spacing commands, delimiter sizing, math delimiters, degree and percent
# signs (currency signs and units in text go first, in _without_units).
_STRIP_TOKENS = (
    "\\left",
    "\\right",
    "\\!",
    "\\,",
    "\\;",
    "\\:",
    "\\ ",
    "$",
    "^{\\circ}",
    "^\\circ",
    "\\%",
    "%",
)
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}")
# Trailing units written as text (5\text{ cm}, 15000 \text{ kcal m}^{-2} \text{yr}^{-1}); not one bare
# letter, which is as often a constant (\mathrm{e}, \mathrm{i}) as a unit.
_TEXT_UNITS = re.compile(r"(?:\s*\\(?:text|mathrm|mbox)\{(?![A-Za-z]\})[^{}]*\}(?:\^\{?-?\d+\}?)?)+\s*$")
# What a unit may follow: the end of a number or a group, not an operator (1 + \text{...}).
_BEFORE_UNIT = re.compile(r"[\d})]\s*$")
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")

_INTEGER = re.compile(r"-?\d+")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+")
_DECIMAL = re.compile(r"-?\d*\.\d+")
# a \times 10^{b}, a \cdot 10^b, 10^{b} and aeb, once normalised (no spaces).
_SCIENTIFIC = re.compile(
    r"(?:(-?\d+(?:\.\d+)?)(?:\\times|\\cdot))?10\^\{?(-?\d+)\}?|(-?\d+(?:\.\d+)?)[eE]([-+]?\d+)"
)
_SLASH_FRACTION = re.compile(r"(-?\d+)/(\d+)")
_LATEX_FRACTION = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(\d+)\}")

# "(B)", "B", "B.", "B)", "B:", optionally followed by the option's text.
_CHOICE = re.compile(r"\s*(?:\(([A-E])\)|([A-E])(?=[.):]|\s*$))[.):]?\s*(.*)", re.DOTALL)


def answer_section(text: str, think_format: bool = False) -> str | None:
    """The part of a response whose last box is its answer (the module docstring's two rules); None when
    ``think_format`` is on and the response never closed its thoughts."""
    if think_format:
        if _THINK_END not in text:
            return None
        return text.split(_THINK_END)[1]  # the study's model_response.split("</think>")[1]
    think_end = text.rfind(_THINK_END)
    return text if think_end == -1 else text[think_end + len(_THINK_END) :]


def extract_boxed(text: str, think_format: bool = False) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` of the answer section, or None.

    Boxes written while reasoning do not count once the response has a ``</think>``. Braces are matched
    with nesting; escaped braces (``\\{``) are literal characters.
    """
    section = answer_section(text, think_format)
    if section is None:
        return None
    opens = list(_BOX_OPEN.finditer(section))
    if not opens:
        return None
    return _balanced_content(section, opens[-1].end())


def _balanced_content(text: str, start: int) -> str | None:
    """Text from ``start`` up to the brace closing the one just before it; None if it never closes."""
    depth = 1
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # an escaped character, \{ and \} included, never opens or closes a group
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return None


def grade(response: str, answers: str | Sequence[str], think_format: bool = False) -> bool:
    """Whether the response's last boxed answer is equivalent to a gold answer: ``answers`` is one answer
    or every accepted form of it. ``think_format``: the study's answer section (module docstring)."""
    predicted = extract_boxed(response, think_format)
    if predicted is None:
        return False
    golds = (answers,) if isinstance(answers, str) else answers
    # The cheap steps on every form before math-verify on any: a later form often matches as a string.
    verdicts = [_quick_verdict(predicted, gold) for gold in golds]
    if any(verdicts):
        return True
    undecided = [gold for gold, verdict in zip(golds, verdicts, strict=True) if verdict is None]
    return any(_math_verify_match(_without_units(predicted), _without_units(gold)) for gold in undecided)


def _quick_verdict(predicted: str, gold: str) -> bool | None:
    """The verdict of the cheap steps (multiple choice, string, exact number); None: math-verify decides."""
    gold_choice = _parse_choice(gold)
    if gold_choice is not None:
        return _grade_choice(predicted, *gold_choice)
    return _quick_match(predicted, gold)


def answers_match(predicted: str, gold: str) -> bool:
    """Equivalence of two extracted answers: string, exact number, then math-verify."""
    verdict = _quick_match(predicted, gold)
    if verdict is not None:
        return verdict
    return _math_verify_match(_without_units(predicted), _without_units(gold))


def _quick_match(predicted: str, gold: str) -> bool | None:
    """Steps 1 and 2 of the module docstring; None where they cannot tell."""
    predicted_norm, gold_norm = _normalize(_without_units(predicted)), _normalize(_without_units(gold))
    if not predicted_norm:
        return False
    if predicted_norm == gold_norm:
        return True
    if predicted_norm[:-1] == gold_norm and predicted_norm[-1].isalpha():
        return False  # the gold times a variable (or a unit it lacks), even where the product is equal (0t)
    predicted_number, gold_number = _as_number(predicted_norm), _as_number(gold_norm)
    if predicted_number is not None and gold_number is not None:
        if predicted_number == gold_number:
            return True
        if _is_exact_notation(predicted_norm) and _is_exact_notation(gold_norm):
            return False  # two different exact numbers: math-verify's rounding could only blur them
    return None


def _without_units(answer: str) -> str:
    """The answer less currency signs and trailing units in text (kept where what they follow is not a
    number or a group, so they are not units)."""
    answer = answer.replace("\\$", "")
    stripped = _TEXT_UNITS.sub("", answer)
    return stripped if _BEFORE_UNIT.search(stripped) else answer


def _math_verify_match(predicted: str, gold: str) -> bool:
    timeout = _timeout_seconds()
    gold_parsed = parse(_wrap(gold), extraction_config=_EXTRACTION_CONFIG, parsing_timeout=timeout)
    predicted_parsed = parse(_wrap(predicted), extraction_config=_EXTRACTION_CONFIG, parsing_timeout=timeout)
    if not gold_parsed or not predicted_parsed:
        return False
    # verify is not symmetric: gold first (it decides how equations and intervals are read).
    return verify(gold_parsed, predicted_parsed, timeout_seconds=timeout)


def _timeout_seconds() -> int | None:
    # SIGALRM can only be installed from the main thread; elsewhere math-verify would raise.
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _wrap(answer: str) -> str:
    """Answer text as math-verify expects it: delimited LaTeX, boxed unless already delimited (by an
    unescaped $: \\$ is a currency sign)."""
    if "\\boxed" in answer or _UNESCAPED_DOLLAR.search(answer):
        return answer
    return f"\\boxed{{{answer}}}"


def _normalize(answer: str) -> str:
    answer = _TEXT_WRAPPER.sub(r"\1", answer)
    for token in _STRIP_TOKENS:
        answer = answer.replace(token, "")
    answer = answer.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    answer = "".join(answer.split())
    return answer.rstrip(".")


def _as_number(answer: str) -> Fraction | None:
    """Exact value of a plain integer, decimal, number in scientific notation or simple fraction (already
    normalised), else None."""
    if _INTEGER.fullmatch(answer) or _DECIMAL.fullmatch(answer):
        return Fraction(answer)
    if _THOUSANDS.fullmatch(answer):
        return Fraction(answer.replace(",", ""))
    if match := _SCIENTIFIC.fullmatch(answer):
        mantissa, exponent = (match[1] or "1", match[2]) if match[3] is None else (match[3], match[4])
        return Fraction(mantissa) * Fraction(10) ** int(exponent)
    if match := _SLASH_FRACTION.fullmatch(answer):
        numerator, denominator = int(match[1]), int(match[2])
    elif match := _LATEX_FRACTION.fullmatch(answer):
        sign = -1 if match[1] else 1
        numerator, denominator = sign * int(match[2]), int(match[3])
    else:
        return None
    return Fraction(numerator, denominator) if denominator != 0 else None


def _is_exact_notation(answer: str) -> bool:
    """Whether a plain number is written digit for digit (no fraction), so its value is all it says."""
    return not (_SLASH_FRACTION.fullmatch(answer) or _LATEX_FRACTION.fullmatch(answer))


def _parse_choice(answer: str) -> tuple[str, str] | None:
    """(letter, option text) of a multiple-choice answer, or None for any other answer."""
    match = _CHOICE.fullmatch(_TEXT_WRAPPER.sub(r"\1", answer))
    if match is None:
        return None
    return match[1] or match[2], match[3].strip()


def _grade_choice(predicted: str, gold_letter: str, gold_option: str) -> bool:
    predicted = _TEXT_WRAPPER.sub(r"\1", predicted).strip()
    if len(predicted) == 1:
        predicted = predicted.upper()  # a lone "b" can only mean option B here
    predicted_choice = _parse_choice(predicted)
    if predicted_choice is not None:
        return predicted_choice[0] == gold_letter
    # The response boxed the option's value rather than its letter.
    return bool(gold_option) and answers_match(predicted, gold_option)


def grade_batch(
    responses: Sequence[str],
    answers: Sequence[str | Sequence[str]],
    workers: int = 0,
    executor: Executor | None = None,
    think_format: bool = False,
) -> list[float]:
    """Rewards r_i in {0.0, 1.0} for ``responses[i]`` against ``answers[i]`` (one answer or its accepted
    forms), with the answer section ``think_format`` picks (see `grade`).

    ``workers=0`` grades in this process. ``workers>0`` starts a pool of that many spawned processes
    for this call (a second or so to start: math-verify imports sympy); a caller grading every step
    should pass its own long-lived ``executor`` instead, which then takes precedence.
    """
    if len(responses) != len(answers):
        raise ValueError(f"responses and answers differ in length: {len(responses)} != {len(answers)}")
    grade_one = partial(grade, think_format=think_format)
    if executor is not None:
        return _grade_with(executor, grade_one, responses, answers, max(workers, 1))
    if workers == 0:
        return [
            float(grade_one(response, answer)) for response, answer in zip(responses, answers, strict=True)
        ]
    # spawn, not fork: the parent may hold torch threads, and forking a threaded process can deadlock.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return _grade_with(pool, grade_one, responses, answers, workers)


def _grade_with(executor: Executor, grade_one, responses: Sequence[str], answers: Sequence, workers: int):
    # A few chunks per worker: per-task overhead stays small and slow answers still balance out.
    chunksize = max(1, math.ceil(len(responses) / (4 * workers)))
    return [float(ok) for ok in executor.map(grade_one, responses, answers, chunksize=chunksize)]
