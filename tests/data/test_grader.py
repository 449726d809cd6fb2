"""Tests for the verifiable reward: boxed extraction, equivalence, multiple choice, threads, processes."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from lrm_fast.data.grader import answers_match, extract_boxed, grade, grade_batch

# ----------------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("The answer is \\boxed{42}.", "42", id="plain"),
        pytest.param("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", id="nested-braces"),
        pytest.param(
            "\\boxed{\\frac{\\sqrt{2}}{\\sqrt{3}}}", "\\frac{\\sqrt{2}}{\\sqrt{3}}", id="deeply-nested"
        ),
        pytest.param("first \\boxed{1}, then \\boxed{2}", "2", id="several-boxes-last-wins"),
        pytest.param("\\fbox{7}", "7", id="fbox"),
        pytest.param("\\boxed{1} then \\fbox{3}", "3", id="fbox-after-boxed"),
        pytest.param("\\boxed {5}", "5", id="space-before-brace"),
        pytest.param("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}", id="escaped-braces-are-literal"),
        pytest.param("\\boxed{}", "", id="empty-box"),
        pytest.param("no box here, the answer is 42", None, id="no-box"),
        pytest.param("\\boxed{\\frac{1}{2}", None, id="unclosed-box-truncated"),
        pytest.param("\\boxed{1} and later \\boxed{\\frac{1", None, id="unclosed-last-box-no-fallback"),
        pytest.param("\\boxedx{3}", None, id="other-command-with-boxed-prefix"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_looks_only_after_think():
    # Boxes written while reasoning do not count once the model closed its thoughts.
    text = "<think>maybe \\boxed{3}? no, \\boxed{4}</think> So the answer is \\boxed{5}."
    assert extract_boxed(text) == "5"
    assert extract_boxed("<think>it is \\boxed{3}</think> I am done.") is None
    # R1-style: the prompt opened <think>, the response only contains the closing tag.
    assert extract_boxed("reasoning \\boxed{1}\n</think>\n\\boxed{2}") == "2"
    # Unfinished thoughts (no closing tag): the whole text is searched.
    assert extract_boxed("<think>so it is \\boxed{8}") == "8"


# ---------------------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        pytest.param("\\frac{1}{2}", "0.5", id="frac-vs-decimal"),
        pytest.param("1/2", "\\frac{1}{2}", id="slash-vs-frac"),
        pytest.param("0.5", "1/2", id="decimal-vs-slash"),
        pytest.param("\\dfrac{1}{2}", "\\frac12", id="dfrac-vs-short-frac"),
        pytest.param("-\\frac{1}{2}", "-0.5", id="negative-frac"),
        pytest.param("\\frac{-1}{2}", "-\\frac{1}{2}", id="minus-inside-frac"),
        pytest.param("-3", "-3", id="negative-int"),
        pytest.param("1,000", "1000", id="thousands-separator"),
        pytest.param("3.0", "3", id="trailing-zero"),
        pytest.param("3.", "3", id="trailing-period"),
        pytest.param("10\\%", "10", id="percent"),
        pytest.param("90^\\circ", "90", id="degrees"),
        pytest.param("\\text{2}", "2", id="text-wrapper"),
        pytest.param("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", id="latex-sqrt"),
        pytest.param("\\left( 1, 2 \\right)", "(1,2)", id="left-right-spacing"),
        pytest.param("(x+1)^2", "x^2+2x+1", id="symbolic"),
        pytest.param("\\{2, 1\\}", "\\{1,2\\}", id="set-order"),
        pytest.param("x = 5", "5", id="equation-vs-value"),
        pytest.param("\\pi", "\\pi", id="symbol"),
        pytest.param("0.333333", "\\frac{1}{3}", id="rounded-decimal"),
    ],
)
def test_equivalent_answers_match(predicted, gold):
    assert answers_match(predicted, gold)
    assert grade(f"so \\boxed{{{predicted}}}", gold)


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        pytest.param("3", "-3", id="sign"),
        pytest.param("\\frac{1}{3}", "0.3", id="close-but-not-equal"),
        pytest.param("0.33", "\\frac{1}{3}", id="too-coarse-decimal"),
        pytest.param("2", "\\sqrt{2}", id="missing-root"),
        pytest.param("(x+1)^2", "x^2+1", id="symbolic-different"),
        pytest.param("", "0", id="empty-box"),
        pytest.param("12", "21", id="different-integers"),
    ],
)
def test_different_answers_do_not_match(predicted, gold):
    assert not answers_match(predicted, gold)
    assert not grade(f"\\boxed{{{predicted}}}", gold)


def test_grade_needs_a_box():
    assert not grade("The answer is 42.", "42")
    assert not grade("\\boxed{42", "42")


def test_grade_ignores_boxes_inside_thoughts():
    assert not grade("<think>\\boxed{42}</think> I give up.", "42")
    assert grade("<think>\\boxed{41}</think> Final: \\boxed{42}", "42")
    assert not grade("<think>\\boxed{42}</think> Final: \\boxed{41}", "42")
    # R1-Distill: the prompt opened `<think>\n`, so the response holds only the closing tag.
    assert grade("Is it \\boxed{41}? No.\n</think>\n\nThe answer is \\(\\boxed{42}\\).", "42")
    assert not grade("So it is \\boxed{42}.\n</think>\n\nI could not finish.", "42")


# ------------------------------------------------------------------------------------ multiple choice


@pytest.mark.parametrize(
    "response",
    [
        "\\boxed{B}",
        "\\boxed{(B)}",
        "\\boxed{b}",
        "\\boxed{\\text{B}}",
        "\\boxed{\\textbf{(B)}}",
        "\\boxed{B) 42}",
    ],
)
def test_multiple_choice_letter_forms(response):
    assert grade(response, "B")
    assert grade(response, "(B)")
    assert not grade(response, "C")


def test_multiple_choice_gold_with_option_text():
    gold = "(B) $\\frac{1}{2}$"
    assert grade("\\boxed{B}", gold)
    assert grade("\\boxed{0.5}", gold)  # the option's value instead of its letter
    assert not grade("\\boxed{A}", gold)
    assert not grade("\\boxed{0.25}", gold)


def test_letter_followed_by_equation_is_not_a_choice():
    # "E = mc^2" starts with a choice letter but is an ordinary answer.
    assert grade("\\boxed{E=mc^2}", "E = mc^2")
    assert not grade("\\boxed{E}", "E = mc^2")


# ------------------------------------------------------------------------------- threads and processes

CASES = [
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", 1.0),
    ("\\boxed{7}", "8", 0.0),
    ("no answer", "8", 0.0),
    ("\\boxed{C}", "(C)", 1.0),
]


def test_grade_inside_threads():
    # Outside the main thread math-verify's SIGALRM timeouts must be off, or it raises ValueError.
    responses, answers, expected = zip(*CASES, strict=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        assert list(pool.map(grade, responses, answers)) == [bool(r) for r in expected]


def test_grade_batch_in_process_and_with_executor():
    responses, answers, expected = zip(*CASES, strict=True)
    assert grade_batch(responses, answers) == list(expected)
    with ThreadPoolExecutor(max_workers=2) as pool:
        assert grade_batch(responses, answers, executor=pool) == list(expected)


def test_grade_batch_process_pool():
    responses, answers, expected = zip(*CASES, strict=True)
    assert grade_batch(responses, answers, workers=2) == list(expected)


def test_grade_batch_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="differ in length: 2 != 1"):
        grade_batch(["\\boxed{1}", "\\boxed{2}"], ["1"])
