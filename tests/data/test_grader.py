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


@pytest.mark.parametrize(
    ("text", "default", "study"),
    [
        # Cut off while reasoning: the study finds no answer at all (format_error_reward).
        pytest.param("<think>so it is \\boxed{8}", "8", None, id="no-think-end"),
        pytest.param("no thoughts, \\boxed{8}", "8", None, id="no-think-at-all"),
        pytest.param("\\boxed{1}</think>\\boxed{2}", "2", "2", id="one-think-end"),
        # model_response.split("</think>")[1]: up to a second </think>, not after the last one.
        pytest.param("<think>a</think>\\boxed{2}</think>\\boxed{3}", "3", "2", id="second-think-end"),
        pytest.param("<think>a</think>\\boxed{2}</think>no box", None, "2", id="nothing-after-second"),
        pytest.param("<think>\\boxed{1}</think>I am done.", None, None, id="box-only-in-thoughts"),
    ],
)
def test_think_format_is_the_studys_answer_section(text, default, study):
    assert extract_boxed(text) == default
    assert extract_boxed(text, think_format=True) == study
    assert grade(text, study or "99", think_format=True) is (study is not None)


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
        # Currency: the study's normaliser drops \\$ (MATH-500 answers \\$36).
        pytest.param("36", "\\$36", id="currency-gold"),
        pytest.param("\\$36", "36", id="currency-response"),
        pytest.param("\\$32,\\!348", "32348", id="currency-thousands"),
        pytest.param("5\\text{ cm}", "5", id="unit-in-text"),
        pytest.param("15000 \\text{ kcal m}^{-2} \\text{yr}^{-1}", "15000", id="units-in-text"),
        # Minerva's accepted forms of one answer.
        pytest.param("3.3e-10", "3.3 \\times 10^{-10}", id="e-vs-times-notation"),
        pytest.param("10^{-3}", "1 \\times 10^{-3}", id="power-of-ten"),
        pytest.param("8.224 \\cdot 10^{-19}", "8.224 \\times 10^{-19}", id="cdot-notation"),
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
        # A trailing letter is a variable, not a unit: math-verify's unit stripping read these as the gold.
        pytest.param("\\frac{n}{2}t", "\\frac{n}{2}", id="trailing-letter-after-fraction"),
        pytest.param("42t", "42", id="trailing-letter-after-integer"),
        pytest.param("2 n^{2}-2 n+1t", "2 n^{2}-2 n+1", id="trailing-letter-after-polynomial"),
        pytest.param("5 m", "5", id="trailing-unit-letter"),
        pytest.param("0.0t", "0.0", id="trailing-letter-after-zero"),  # 0t = 0 to sympy
        # Text after an operator, or one letter in text, is not a unit (the i and e would be dropped).
        pytest.param("2 + \\mathrm{i}", "2 + \\mathrm{e}", id="constants-in-text"),
        pytest.param("1 + \\text{ cm}", "1", id="text-after-operator"),
        # Numbers written exactly are compared exactly: math-verify rounded both to 6 decimal places.
        pytest.param("9.224\\times10^{-19}", "8.224 \\times 10^{-19}", id="scientific-mantissa"),
        pytest.param("8.224\\times10^{-20}", "8.224 \\times 10^{-19}", id="scientific-exponent"),
        pytest.param("2.8 \\times 10^{-19}", "2.88 \\times 10^{-19}", id="scientific-rounded"),
        pytest.param("3.61e-11", "3.61e-10", id="e-notation-exponent"),
        pytest.param("0.0000013", "0.0000012", id="tiny-decimals"),
        # A gold latex2sympy cannot read was once read as a number inside it (the 2 of "1 / 2").
        pytest.param(
            "2", "\\hbar \\omega(v+1 / 2)-\\frac{E_{0}^{2} e^{2}}{2 m \\omega^{2}}", id="unparsable-gold"
        ),
    ],
)
def test_different_answers_do_not_match(predicted, gold):
    assert not answers_match(predicted, gold)
    assert not grade(f"\\boxed{{{predicted}}}", gold)


def test_unparsable_gold_still_matches_itself():
    gold = "\\hbar \\omega(v+1 / 2)-\\frac{E_{0}^{2} e^{2}}{2 m \\omega^{2}}"
    assert answers_match("\\hbar\\omega(v+1/2)-\\frac{E_{0}^{2}e^{2}}{2m\\omega^{2}}", gold)


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        # Where the study's grader says no (docs/PARITY.md, "Grader").
        pytest.param("h = \\frac{27}{2}", "$\\frac{27}{2}$", id="assignment-vs-dollar-gold"),
        pytest.param("4 + 11z - 7y + 5x = 0", "5x - 7y + 11z + 4 = 0", id="reordered-equation"),
        pytest.param("1 - e^{-at} + b \\delta(t)", "b \\delta(t)+1-e^{-at}", id="reordered-sum"),
        pytest.param("D.", "D", id="letter-with-period"),
    ],
)
def test_equivalences_the_study_misses(predicted, gold):
    assert grade(f"</think>\\boxed{{{predicted}}}", gold, think_format=True)


# ------------------------------------------------------------------------------ several accepted forms


def test_any_accepted_form_counts():
    forms = ("0.01\n", "0.02\n")  # Minerva: "to one significant figure", either rounding accepted
    assert grade("\\boxed{0.01}", forms) and grade("\\boxed{0.02}", forms)
    assert not grade("\\boxed{0.03}", forms)
    assert grade_batch(["\\boxed{2}", "\\boxed{2}"], [("1", "2"), "1"]) == [1.0, 0.0]


def test_grade_batch_passes_the_rule_to_worker_processes():
    responses = ["\\boxed{4}", "</think>\\boxed{4}"]
    assert grade_batch(responses, ["4", ("3", "4")], workers=1, think_format=True) == [0.0, 1.0]
    assert grade_batch(responses, ["4", ("3", "4")], workers=1) == [1.0, 1.0]


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
