"""Benchmarks of `lrm-fast-eval`: datasets by name (free-form or multiple choice) and the built-in task.

A benchmark is any dataset source (lrm_fast/config/datasets.py: catalogue:NAME, a local .json/.jsonl/
.parquet file or folder, a URL, a hub id) with a problem and an answer column (names configurable, a
catalogue entry brings its own), read through lrm_fast.data.examples: a missing column is named with the
dataset, split and columns found; a bad row with the file and the line (row for other formats).

Multiple choice: a row whose options column is set (a list of option texts, lettered A, B, ... in
order, or a {letter: text} dict) gets its options listed under the problem, one "(A) text" line each.
Its answer must name a letter (``B``, ``(B)``, ``B.``); the gold answer kept is ``(B) text``, the form
in which the grader accepts a boxed letter and also a boxed copy of the option's text. (The study's own
multiple-choice files list the options in the problem text and answer with the letter; their catalogue
entries carry the study's letter instruction as template.)

`builtin:arithmetic` and `builtin:long_arithmetic` are the held-out splits of the built-in tasks at the
trainer's default settings (lrm_fast.data.sources), so a trained checkpoint is scored on the problems its
run evaluated.

Simplifications: at most five options (A-E, the grader's letters); the built-in benchmark follows the
default task settings, not those of the run that trained the checkpoint.
"""

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lrm_fast.config import BenchmarkConfig, DataConfig
from lrm_fast.config.choices import DataSource
from lrm_fast.config.datasets import Columns, DatasetSource, resolve_source
from lrm_fast.config.evaluate import BUILTIN_BENCHMARKS
from lrm_fast.data.examples import PromptExample, RowError, as_source, field_value, read_examples, to_example
from lrm_fast.data.prompts import DEEPSCALER_TEMPLATE, prompt_template
from lrm_fast.data.sources import load_examples

LETTERS = "ABCDE"  # the multiple-choice letters lrm_fast.grader understands
BUILTIN_PROBLEMS = 1000  # DESIGN.md: 500 problems give about +/-3 points, so twice that by default
MULTIPLE_CHOICE_TEMPLATE = (
    "{problem}\n\nLet's think step by step and output the letter of the correct option within \\boxed{}."
)
_ANSWER_LETTER = re.compile(r"\(?([A-E])\)?\.?")


@dataclass(frozen=True)
class Benchmark:
    """A named list of problems and the prompt template they are asked with."""

    name: str
    examples: list[PromptExample]
    template: str


def load_benchmark(spec: BenchmarkConfig) -> Benchmark:
    """The problems of one configured benchmark (the first `spec.problems` when set)."""
    if spec.path in BUILTIN_BENCHMARKS:
        data = DataConfig(name=DataSource(spec.path.removeprefix("builtin:")), train_problems=0)
        _, examples = load_examples(data, num_heldout=spec.problems or BUILTIN_PROBLEMS)
        return Benchmark(spec.name, examples, spec.template or prompt_template(data))
    source = benchmark_source(spec)
    examples, multiple_choice = load_benchmark_file(source)
    template = MULTIPLE_CHOICE_TEMPLATE if multiple_choice else DEEPSCALER_TEMPLATE
    return Benchmark(spec.name, examples[: spec.problems], spec.template or source.template or template)


def benchmark_source(spec: BenchmarkConfig) -> DatasetSource:
    """The dataset a benchmark names, with the settings it gives (null ones keep the entry's own)."""
    columns = {
        "problem": spec.problem_key,
        "answer": spec.answer_key,
        "options": spec.options_key,
        "id": spec.id_key,
    }
    return resolve_source(
        spec.path, subset=spec.subset, split=spec.split, revision=spec.revision, columns=columns
    )


def load_benchmark_file(
    source: DatasetSource | str | Path, columns: Columns | None = None
) -> tuple[list[PromptExample], bool]:
    """(examples in order, whether any of them is multiple choice) of a dataset."""
    source = as_source(source, columns)
    mapping = source.columns

    def convert(record: dict[str, Any], index: int) -> tuple[PromptExample, bool]:
        example = to_example(record, mapping, str(index), source.strip_suffix)
        options = field_value(record, mapping.options)
        if options is None:
            return example, False
        return _multiple_choice(example, options, mapping.options, mapping.answer), True

    converted = read_examples(source, (mapping.problem, mapping.answer), convert)
    return [example for example, _ in converted], any(choice for _, choice in converted)


def _multiple_choice(
    example: PromptExample, options: Any, options_key: str, answer_key: str
) -> PromptExample:
    """The example with its options listed under the problem and its gold answer as "(letter) text"."""
    texts = _option_texts(options, options_key)
    match = _ANSWER_LETTER.fullmatch(example.answer.strip())
    if match is None or LETTERS.index(match[1]) >= len(texts):
        raise RowError(
            f"column {answer_key!r} must be an option letter {LETTERS[0]}-{LETTERS[len(texts) - 1]} "
            f"(the row has {len(texts)} options), got {example.answer!r:.80}"
        )
    letter = match[1]
    listing = "\n".join(f"({LETTERS[i]}) {text}" for i, text in enumerate(texts))
    return replace(
        example,
        problem=f"{example.problem}\n\n{listing}",
        answer=f"({letter}) {texts[LETTERS.index(letter)]}",
    )


def _option_texts(options: Any, options_key: str) -> list[str]:
    """Option texts in letter order, from a list or a {letter: text} dict with letters A, B, ... ."""
    if isinstance(options, dict):
        # Parquet stores dicts as structs with every row's keys, absent ones as None.
        options = {letter: text for letter, text in options.items() if text is not None}
        letters = sorted(options)
        if letters != list(LETTERS[: len(letters)]):
            raise RowError(f"column {options_key!r} must have the letters A, B, ... as keys, got {letters}")
        options = [options[letter] for letter in letters]
    if not isinstance(options, (list, tuple)):
        raise RowError(
            f"column {options_key!r} must be a list of option texts or a {{letter: text}} dict, "
            f"got {type(options).__name__}"
        )
    if not 2 <= len(options) <= len(LETTERS):
        raise RowError(
            f"column {options_key!r} must hold 2 to {len(LETTERS)} options (letters A-E), got {len(options)}"
        )
    if not all(isinstance(text, (str, int, float)) and not isinstance(text, bool) for text in options):
        raise RowError(f"column {options_key!r} must hold strings or numbers, got {options!r:.80}")
    return [str(text) for text in options]
