"""The grader against the study's own, row by row on a table of the study's verdicts.

docs/parity/grader_verdicts.jsonl holds response variants of real answers of the study's nine benchmarks,
each with the verdict of the study's `deepscaler_reward_fn` (recorded by docs/parity/record_grader_verdicts.py
from the study's code). Graded with the study's answer section (think_format=True), every row must get the
study's verdict except the rows docs/PARITY.md lists in its "Grader" section, each with its reason; a
listed row that agrees fails too, so the list stays true.
"""

import json
import re
from pathlib import Path

import pytest

from lrm_fast.data.grader import grade_batch

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "docs" / "parity" / "grader_verdicts.jsonl"
PARITY = ROOT / "docs" / "PARITY.md"
BENCHMARKS = {
    "aime24",
    "aime25",
    "amc",
    "math500",
    "minerva",
    "olympiad_bench",
    "gpqa_diamond",
    "mmlu_stem",
    "gaokao_math_qa",
}
VARIANTS = {"right", "no_think", "right_then_wrong", "wrong_then_right", "second_think", "off_by_one"}


def _rows() -> list[dict]:
    return [json.loads(line) for line in TABLE.read_text(encoding="utf-8").splitlines()]


def _listed_disagreements() -> set[str]:
    """Row ids in the first column of the tables of PARITY.md's "Grader" section."""
    section = PARITY.read_text(encoding="utf-8").split("\n## Grader\n", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {row_id for cell in first_cells for row_id in re.findall(r"`([^`]+)`", cell)}


def test_the_table_covers_every_benchmark_and_variant():
    ids = [row["id"] for row in _rows()]
    assert len(ids) == len(set(ids))
    assert {row_id.split("/")[0] for row_id in ids} == BENCHMARKS | {"special"}
    for benchmark in BENCHMARKS:
        variants = {row_id.rsplit("/", 1)[1] for row_id in ids if row_id.startswith(benchmark + "/")}
        assert variants >= VARIANTS, benchmark
    assert sum(row_id.rsplit("/", 1)[1].startswith("alternative") for row_id in ids) >= 40
    assert _listed_disagreements() <= set(ids)  # a listed row the table lacks would hide a typo


@pytest.mark.slow
def test_the_grader_gives_the_study_verdicts_but_where_listed():
    rows = _rows()
    # Worker processes: math-verify keeps its timeouts there, and a few symbolic rows take seconds.
    ours = grade_batch(
        [r["response"] for r in rows], [r["answers"] for r in rows], workers=2, think_format=True
    )
    disagree = {row["id"] for row, verdict in zip(rows, ours, strict=True) if bool(verdict) != row["study"]}
    listed = _listed_disagreements()
    assert sorted(disagree - listed) == [], "disagreements docs/PARITY.md does not list"
    assert sorted(listed - disagree) == [], "listed in docs/PARITY.md, but the graders now agree"
