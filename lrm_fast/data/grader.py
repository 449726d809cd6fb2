"""Verifiable reward: is the last boxed answer of a response equivalent to the ground truth?

r_i = 1.0 if the content of the last ``\\boxed{}`` (after ``</think>`` when the response has one) is
equivalent to the gold answer, else 0.0. No format reward, as in the study (PAPER.md §1).

Equivalence is decided in three steps, cheapest first:

1. normalised string equality (spacing, ``\\left``/``\\right``, ``\\dfrac``, ``^\\circ``, ``\\%``,
   a trailing period);
2. exact rational comparison of plain numbers (integers, decimals, ``a/b``, ``\\frac{a}{b}``), so the
   common case never reaches sympy; two different integers are a definite "no";
3. math-verify (``parse`` + ``verify``) on both answers wrapped in ``\\boxed{}``: symbolic and numeric
   equivalence, sets, intervals, equations.

Multiple choice: a gold answer that is a letter A-E (``B``, ``(B)``, ``B.``, or ``(B) 42`` with the
option's text) is compared by letter; a response that boxes the option's text instead of the letter
also counts when the gold answer carries that text.

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
from multiprocessing import get_context

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

# math-verify's own per-expression default; only applied in the main thread (see module docstring).
MATH_VERIFY_TIMEOUT_S = 5

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*\{")
_THINK_END = "</think>"

# Box first: the answer arrives already extracted and wrapped in \boxed{}.
_EXTRACTION_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())

# Removed before comparing strings: spacing commands, delimiters sizing, degree and percent signs.
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

_INTEGER = re.compile(r"-?\d+")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+")
_DECIMAL = re.compile(r"-?\d*\.\d+")
_SLASH_FRACTION = re.compile(r"(-?\d+)/(\d+)")
_LATEX_FRACTION = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(\d+)\}")

# "(B)", "B", "B.", "B)", "B:", optionally followed by the option's text.
_CHOICE = re.compile(r"\s*(?:\(([A-E])\)|([A-E])(?=[.):]|\s*$))[.):]?\s*(.*)", re.DOTALL)


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}``, or None.

    Only the text after ``</think>`` is searched when it is present, so boxes written while reasoning
    do not count. Braces are matched with nesting; escaped braces (``\\{``) are literal characters.
    """
    think_end = text.rfind(_THINK_END)
    if think_end != -1:
        text = text[think_end + len(_THINK_END) :]
    opens = list(_BOX_OPEN.finditer(text))
    if not opens:
        return None
    return _balanced_content(text, opens[-1].end())


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


def grade(response: str, answer: str) -> bool:
    """Whether the response's last boxed answer is equivalent to the gold ``answer``."""
    predicted = extract_boxed(response)
    if predicted is None:
        return False
    gold_choice = _parse_choice(answer)
    if gold_choice is not None:
        return _grade_choice(predicted, *gold_choice)
    return answers_match(predicted, answer)


def answers_match(predicted: str, gold: str) -> bool:
    """Equivalence of two extracted answers: string, exact number, then math-verify."""
    predicted_norm, gold_norm = _normalize(predicted), _normalize(gold)
    if not predicted_norm:
        return False
    if predicted_norm == gold_norm:
        return True
    predicted_number, gold_number = _as_number(predicted_norm), _as_number(gold_norm)
    if predicted_number is not None and gold_number is not None:
        if predicted_number == gold_number:
            return True
        if predicted_number.denominator == 1 and gold_number.denominator == 1:
            return False  # two different integers: nothing math-verify could add
    return _math_verify_match(predicted, gold)


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
    """Answer text as math-verify expects it: delimited LaTeX, boxed unless already delimited."""
    if "\\boxed" in answer or "$" in answer:
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
    """Exact value of a plain integer, decimal or simple fraction (already normalised), else None."""
    if _INTEGER.fullmatch(answer) or _DECIMAL.fullmatch(answer):
        return Fraction(answer)
    if _THOUSANDS.fullmatch(answer):
        return Fraction(answer.replace(",", ""))
    if match := _SLASH_FRACTION.fullmatch(answer):
        numerator, denominator = int(match[1]), int(match[2])
    elif match := _LATEX_FRACTION.fullmatch(answer):
        sign = -1 if match[1] else 1
        numerator, denominator = sign * int(match[2]), int(match[3])
    else:
        return None
    return Fraction(numerator, denominator) if denominator != 0 else None


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
    answers: Sequence[str],
    workers: int = 0,
    executor: Executor | None = None,
) -> list[float]:
    """Rewards r_i in {0.0, 1.0} for ``responses[i]`` against ``answers[i]``.

    ``workers=0`` grades in this process. ``workers>0`` starts a pool of that many spawned processes
    for this call (a second or so to start: math-verify imports sympy); a caller grading every step
    should pass its own long-lived ``executor`` instead, which then takes precedence.
    """
    if len(responses) != len(answers):
        raise ValueError(f"responses and answers differ in length: {len(responses)} != {len(answers)}")
    if executor is not None:
        return _grade_with(executor, responses, answers, max(workers, 1))
    if workers == 0:
        return [float(grade(response, answer)) for response, answer in zip(responses, answers, strict=True)]
    # spawn, not fork: the parent may hold torch threads, and forking a threaded process can deadlock.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return _grade_with(pool, responses, answers, workers)


def _grade_with(
    executor: Executor, responses: Sequence[str], answers: Sequence[str], workers: int
) -> list[float]:
    # A few chunks per worker: per-task overhead stays small and slow answers still balance out.
    chunksize = max(1, math.ceil(len(responses) / (4 * workers)))
    return [float(ok) for ok in executor.map(grade, responses, answers, chunksize=chunksize)]
