"""Prompt datasets from local files: problems with their answers (and stored solutions).

A dataset is a JSON Lines file (one object per line) or a Parquet file (needs pyarrow) with a
problem and an answer column, optionally an id and a list of offline correct solutions (used by
offline sample injection, PAPER.md §5). Column names are configurable. Every row is checked when
loading, and a bad row raises ValueError naming the file and the line (JSON Lines) or row (Parquet).

Simplification: the whole file is read into memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PromptExample:
    """One problem with its ground-truth answer."""

    id: str
    problem: str
    answer: str
    solutions: tuple[str, ...] = ()
    """Offline correct solutions (response text, without the prompt) for sample injection."""


@dataclass(frozen=True)
class Columns:
    """Column names in the data file; ``id`` and ``solutions`` may be absent from any row."""

    problem: str = "problem"
    answer: str = "answer"
    id: str = "id"
    solutions: str = "solutions"


def load_prompts(path: str | Path, columns: Columns = Columns()) -> list[PromptExample]:
    """Read every example of a ``.jsonl`` or ``.parquet`` file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    if path.suffix == ".jsonl":
        records = read_jsonl(path)
    elif path.suffix == ".parquet":
        records = read_parquet(path)
    else:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r} (expected .jsonl or .parquet)")
    examples = [
        to_example(record, columns, default_id=str(index), where=f"{path}, {where}")
        for index, (where, record) in enumerate(records)
    ]
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``"line N"``, record) for every non-blank line."""
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {line_number}: invalid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path}, line {line_number}: expected a JSON object, got {type(record).__name__}"
                )
            yield f"line {line_number}", record


def read_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``"row N"``, record) for every row (1-based, like line numbers)."""
    try:
        import pyarrow.parquet as pq  # optional: only Parquet files need it
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow: pip install 'lrm-fast[parquet]'") from None
    for row_number, record in enumerate(pq.read_table(path).to_pylist(), start=1):
        yield f"row {row_number}", record


def to_example(record: dict[str, Any], columns: Columns, default_id: str, where: str) -> PromptExample:
    for required in (columns.problem, columns.answer):
        if required not in record:
            found = ", ".join(map(str, record)) or "none"
            raise ValueError(f"{where}: missing column {required!r} (found: {found})")
    problem = record[columns.problem]
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError(
            f"{where}: column {columns.problem!r} must be a non-empty string, got {problem!r:.80}"
        )
    return PromptExample(
        id=_text_field(record.get(columns.id), columns.id, where, default=default_id),
        problem=problem,
        answer=_text_field(record[columns.answer], columns.answer, where),
        solutions=_solutions_field(record.get(columns.solutions), columns.solutions, where),
    )


def _text_field(value: Any, name: str, where: str, default: str | None = None) -> str:
    """A string, or a number written as one (JSON answers are often bare integers)."""
    if value is None and default is not None:
        return default
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{where}: column {name!r} must be a string or a number, got {type(value).__name__}")


def _solutions_field(value: Any, name: str, where: str) -> tuple[str, ...]:
    """A list of solution strings; a single string counts as a list of one, a missing value as none."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(solution, str) for solution in value):
        return tuple(value)
    raise ValueError(f"{where}: column {name!r} must be a list of strings, got {value!r:.80}")
