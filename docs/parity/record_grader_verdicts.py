"""Record the study's grader verdicts on response variants of its nine benchmarks' answers.

    git clone https://github.com/takagi97/Dissect-Long-Reason-Models /tmp/study
    git -C /tmp/study checkout fe466d7b58e68701368ed10225ee00ba71bb2c18
    python -m venv /tmp/study-venv && /tmp/study-venv/bin/pip install sympy==1.13.1 pylatexenc==2.10
    cd docs/parity && /tmp/study-venv/bin/python record_grader_verdicts.py /tmp/study grader_verdicts.jsonl

The verdicts come from the study's own `deepscaler_reward_fn` (deepscaler/deepscaler/rewards/math_reward.py),
the grader of its trainer and of every evaluation script, run from that checkout; sympy and pylatexenc at
the versions of the study's requirements.txt. Its module deepscaler.utils (clients of LLM APIs: torch,
vertexai, openai) is replaced by a stand-in that raises: the LLM judge is off (enable_llm=False), so the
grader never calls it. This script needs nothing else, so it runs in a throwaway environment; the project
keeps only its output, tests/data/test_grader_parity.py grades every row with the project's grader.

Rows (one JSON object per line): `id` (benchmark/problem index/variant, or special/NAME), `response`,
`answers` (every accepted form, as the study's data file lists them, as strings) and `study` (its verdict).
Problems: every problem of AIME24, AIME25, AMC and GPQA-Diamond; 40 evenly spaced ones of each larger
benchmark; and Minerva's other problems with several accepted forms, with only the right and alternative
variants. Variants of each problem:

    right                the first form boxed after </think>
    no_think             the same box in a response cut off while reasoning (no </think>)
    right_then_wrong     the right answer boxed while reasoning, a wrong one after </think>
    wrong_then_right     the converse
    second_think         right after the first </think>, wrong after a second one
    alternative{k}       form k >= 1 boxed after </think> (forms that differ from the earlier ones)
    off_by_one           the answer's last number plus 1 (a wrong letter for multiple choice)
    unit_letter          a letter after the answer (t, read as a unit by a lenient parser)
    rounded              the last decimal of the answer with its last digit dropped

and a few hand-picked cases (SPECIAL).
"""

import json
import re
import subprocess
import sys
import types
from pathlib import Path

STUDY_COMMIT = "fe466d7b58e68701368ed10225ee00ba71bb2c18"
SAMPLE = 40  # problems of each large benchmark
# Benchmark (its conf/catalogue.yaml name): its file under data/test, and whether all its problems count.
BENCHMARKS = {
    "aime24": ("aime.json", True),
    "aime25": ("aime25.json", True),
    "amc": ("amc.json", True),
    "math500": ("math.json", False),
    "minerva": ("minerva.json", False),
    "olympiad_bench": ("olympiad_bench.json", False),
    "gpqa_diamond": ("gpqa_diamond.json", True),
    "mmlu_stem": ("mmlu_stem.json", False),
    "gaokao_math_qa": ("gaokao_math_qa.json", False),
}
MULTIPLE_CHOICE = ("gpqa_diamond", "mmlu_stem", "gaokao_math_qa")
LETTERS = "ABCD"

REASONING = "<think>\nStep by step.\n"
ANSWER = "\n</think>\n\nSo the answer is $\\boxed{{{}}}$."

ENERGY = "8.224 \\times 10^{-19}"
HBAR = "\\hbar \\omega(v+1 / 2)-\\frac{E_{0}^{2} e^{2}}{2 m \\omega^{2}}"
# (name, boxed answer, accepted answers): the cases that once split the two graders, and the ones where they
# still differ (docs/PARITY.md); most answers are a benchmark's own (its problem noted).
SPECIAL = [
    ("unit_letter_after_fraction", "\\frac{n}{2}t", ["$\\frac{n}{2}$"]),  # olympiad_bench 599
    ("scientific_mantissa", "9.224\\times10^{-19}", [ENERGY, ENERGY + "\n"]),  # minerva 168
    ("scientific_exponent", "8.224\\times10^{-20}", [ENERGY]),
    ("tiny_decimal", "0.0000013", ["0.0000012"]),
    ("misparse_hbar", "2", [HBAR + "\n", HBAR]),  # minerva 264
    ("currency_gold", "36", ["\\$36"]),  # math500 488
    ("currency_both", "\\$36", ["\\$36"]),
    ("currency_response", "\\$36", ["36"]),
    ("currency_decimal", "18.90", ["\\$18.90"]),  # math500 459
    ("assignment_vs_dollar_gold", "h = \\frac{27}{2}", ["$\\frac{27}{2}$"]),  # olympiad_bench 411
    ("reordered_equation", "4 + 11z - 7y + 5x = 0", ["5x - 7y + 11z + 4 = 0"]),  # math500 179
    ("reordered_sum", "1 - e^{-at} + b \\delta(t)", ["b \\delta(t)+1-e^{-at}\n"]),  # minerva 118
    ("letter_with_period", "D.", ["D"]),  # gpqa_diamond 0
    ("letter_in_parentheses", "(D)", ["D"]),
    ("lowercase_letter", "d", ["D"]),
]


def load_study_grader(study: Path):
    """The study's deepscaler_reward_fn, imported from its checkout with deepscaler.utils stood in for."""
    sys.path.insert(0, str(study / "deepscaler"))
    stand_in = types.ModuleType("deepscaler.utils")

    def no_llm(*args, **kwargs):
        raise RuntimeError("the LLM judge is off (enable_llm=False)")

    stand_in.call_gemini_llm = stand_in.call_oai_rm_llm = no_llm
    sys.modules["deepscaler.utils"] = stand_in
    from deepscaler.rewards.math_reward import deepscaler_reward_fn

    return deepscaler_reward_fn


def problems(study: Path, name: str) -> list[tuple[int, list[str], bool]]:
    """(index, accepted answers as strings, whether it gets every variant) of the problems of one benchmark
    that the table covers: the sample gets every variant, Minerva's other problems with several forms
    only their right forms (their symbolic near misses would only add sympy time)."""
    file, every = BENCHMARKS[name]
    rows = json.loads((study / "data" / "test" / file).read_text(encoding="utf-8"))
    answers = [
        [str(a) for a in r["answer"]] if isinstance(r["answer"], list) else [str(r["answer"])] for r in rows
    ]
    sample = (
        set(range(len(rows))) if every else {round(i * (len(rows) - 1) / (SAMPLE - 1)) for i in range(SAMPLE)}
    )
    several = {i for i, forms in enumerate(answers) if len(forms) > 1} if name == "minerva" else set()
    return [(i, answers[i], i in sample) for i in sorted(sample | several)]


def boxable(answer: str) -> str:
    """An accepted form as a model would box it: stripped, without the $ delimiters some forms carry."""
    answer = answer.strip()
    return answer.replace("$", "") if answer.startswith("$") else answer


def off_by_one(answer: str) -> str | None:
    """The answer with its last number increased by 1 (in its last digit), None without digits."""
    numbers = list(re.finditer(r"\d+", answer))
    if not numbers:
        return None
    match = numbers[-1]
    return answer[: match.start()] + str(int(match[0]) + 1).zfill(len(match[0])) + answer[match.end() :]


def rounded(answer: str) -> str | None:
    """The answer with the last digit of its last decimal (two or more decimal places) dropped."""
    decimals = list(re.finditer(r"\d+\.\d{2,}", answer))
    if not decimals:
        return None
    last = decimals[-1]
    return answer[: last.end() - 1] + answer[last.end() :]


def unit_letter(answer: str) -> str:
    # A space after a command name (\circ t), so the letter does not lengthen the command.
    return answer + (" t" if re.search(r"\\[A-Za-z]+$", answer) else "t")


def right_forms(forms: list[str]) -> dict[str, str]:
    """The right variant and one alternative variant per form that differs from the earlier ones."""
    variants, seen = {"right": REASONING + ANSWER.format(boxable(forms[0]))}, {boxable(forms[0])}
    for k, form in enumerate(forms[1:], start=1):
        if boxable(form) not in seen:
            seen.add(boxable(form))
            variants[f"alternative{k}"] = REASONING + ANSWER.format(boxable(form))
    return variants


def responses(forms: list[str], multiple_choice: bool) -> dict[str, str]:
    """Response text of each variant of one problem (see the module docstring)."""
    right = boxable(forms[0])
    wrong = LETTERS[(LETTERS.index(right) + 1) % 4] if multiple_choice else off_by_one(right) or right + "+1"
    variants = {
        **right_forms(forms),
        "no_think": REASONING + f"So far $\\boxed{{{right}}}$, but",
        "right_then_wrong": REASONING + f"Maybe $\\boxed{{{right}}}$." + ANSWER.format(wrong),
        "wrong_then_right": REASONING + f"Maybe $\\boxed{{{wrong}}}$." + ANSWER.format(right),
        "second_think": REASONING + ANSWER.format(right) + ANSWER.format(wrong),
        "off_by_one": REASONING + ANSWER.format(wrong),
    }
    if not multiple_choice:
        variants["unit_letter"] = REASONING + ANSWER.format(unit_letter(right))
        if (shorter := rounded(right)) is not None:
            variants["rounded"] = REASONING + ANSWER.format(shorter)
    return variants


def cases(study: Path):
    """(id, response, accepted answers) of every row, in a fixed order."""
    for name in BENCHMARKS:
        for index, forms, every_variant in problems(study, name):
            variants = responses(forms, name in MULTIPLE_CHOICE) if every_variant else right_forms(forms)
            for variant, response in variants.items():
                yield f"{name}/{index}/{variant}", response, forms
    for name, boxed, forms in SPECIAL:
        yield f"special/{name}", REASONING + ANSWER.format(boxed), forms


def main(study: Path, out: Path) -> None:
    head = subprocess.run(["git", "-C", str(study), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.stdout.strip() != STUDY_COMMIT:
        sys.exit(f"{study}: not a checkout of the study's commit {STUDY_COMMIT} (git says {head.stdout!r})")
    grade = load_study_grader(study)
    with out.open("w", encoding="utf-8") as file:
        for row_id, response, forms in cases(study):
            row = {
                "id": row_id,
                "response": response,
                "answers": forms,
                "study": bool(grade(response, forms)),
            }
            file.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
