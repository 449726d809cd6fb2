"""Small local stand-ins for the study's data files, with the real files' columns and layouts, and the
catalogue (conf/catalogue.yaml) with its paths pointed at them: tests load them through the same function
and the same column mappings as a run, offline.

Layouts (read from the study's repository, commit in conf/catalogue.yaml): the training and validation
parquet files are verl's (a chat `prompt` whose user message carries the instruction, `reward_model`
{ground_truth, style}, `extra_info` {index, split}; the OSI file adds `offline_samples_str_list`); the
test files are JSON arrays of records with `problem` and `answer` (a float for AMC, a list of accepted
forms for Minerva and OlympiadBench, a letter for the multiple-choice sets, whose options are in the
problem text).
"""

import json
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lrm_fast.config.datasets import DatasetSource, catalogue

INSTRUCTION = " Let's think step by step and output the final answer within \\boxed{}."
MC_INSTRUCTION = (
    "\n\nPlease reason step by step, and put your final answer letter in \\boxed{}, like \\boxed{A}."
)
QUESTIONS = [
    ("What is $1+1$?", "2"),
    ("Find $x$ if $2x = 6$.", "3"),
    ("What is $\\frac{1}{2}+\\frac{1}{2}$?", "1"),
]


def verl_rows(questions, solutions=None) -> pa.Table:
    """Rows as deepscaler/scripts/data/deepscaler_dataset.py writes them (the study's parquet layout)."""
    columns = {
        "data_source": ["" for _ in questions],
        "prompt": [[{"content": q + INSTRUCTION, "role": "user"}] for q, _ in questions],
        "ability": ["math" for _ in questions],
        "reward_model": [{"ground_truth": a, "style": "rule"} for _, a in questions],
        "extra_info": [{"index": i, "split": "train"} for i in range(len(questions))],
    }
    if solutions is not None:
        columns["offline_samples_str_list"] = solutions
    return pa.table(columns)


def _choices(question: str, options: list[str]) -> str:
    """Options in the problem text, as data/test/preprocess_gpqa.py writes them."""
    return "\n".join([question, "Answer Choices:", *(f"({'ABCD'[i]}) {o}" for i, o in enumerate(options))])


# One stand-in per test file, with the real files' columns (values made up).
JSON_FILES = {
    "aime24": [
        {"problem": q, "solution": "...", "answer": a, "year": 2024, "aime_number": 1, "problem_number": i}
        for i, (q, a) in enumerate(QUESTIONS)
    ],
    "aime25": [
        {"id": i, "problem": q, "answer": a, "solution": a, "url": "u", "year": 2025, "__index_level_0__": i}
        for i, (q, a) in enumerate(QUESTIONS)
    ],
    "amc": [{"problem": "What is $71 \\cdot 2$?", "answer": 142.0, "url": "u", "difficulty": 2.0}],
    "math500": [
        {"problem": q, "answer": a, "difficulty": 2.0, "unique_id": f"test/algebra/{i}.json"}
        for i, (q, a) in enumerate(QUESTIONS)
    ],
    "minerva": [
        {
            "problem": "Give $0.015$ to one significant figure.",
            "solution": "s",
            "type": "t",
            "idx": 9,
            "answer": ["0.01\n", "0.02\n"],
        },
    ],
    "olympiad_bench": [
        {
            "id": 1606,
            "subfield": "Combinatorics",
            "context": None,
            "solution": ["s"],
            "is_multiple_answer": False,
            "unit": None,
            "answer_type": "Numerical",
            "error": None,
            "problem": "How many moves?",
            "answer": ["2"],
        },
    ],
    "gpqa_diamond": [{"problem": _choices("Which is prime?", ["4", "6", "8", "7"]), "answer": "D"}],
    "mmlu_stem": [{"problem": _choices("Which is even?", ["3", "4"]), "answer": "B"}],
    "gaokao_math_qa": [
        {"problem": "设 $x=1$, 则 $x+1=$ ( )\n从以下选项中选择:\n(A) 1\n(B) 2", "answer": "B"}
    ],
    # The hub upstream (problem, answer, solution), as a local file.
    "deepscaler_preview": [{"problem": q, "answer": a, "solution": "s"} for q, a in QUESTIONS],
}
OSI_SOLUTIONS = [["<think>1+1=2</think>\\boxed{2}", "<think>2</think>\\boxed{2}"], [], ["\\boxed{1}"]]


def write_study_files(folder: Path) -> dict[str, Path]:
    """Every catalogue entry's stand-in file under `folder`, by entry name."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "deepscaler_dedup_long": folder / "deepscaler-train.dedup_long.parquet",
        "osi_offline_samples": folder / "offline_samples.0.25.dedup_long.sample2560.parquet",
        "aime24_val": folder / "aime.parquet",
    }
    pq.write_table(verl_rows(QUESTIONS), paths["deepscaler_dedup_long"])
    pq.write_table(verl_rows(QUESTIONS, OSI_SOLUTIONS), paths["osi_offline_samples"])
    pq.write_table(verl_rows(QUESTIONS[:2]), paths["aime24_val"])
    for name, records in JSON_FILES.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    return paths


def local_catalogue(folder: Path) -> dict[str, DatasetSource]:
    """The real catalogue's entries (columns, templates, splits) with their paths pointed at stand-ins."""
    paths = write_study_files(folder)
    return {name: replace(entry, path=str(paths[name]), revision=None) for name, entry in catalogue().items()}
