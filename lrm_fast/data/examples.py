"""Prompt datasets: problems with their answers (and stored solutions), from any dataset source.

Rows come from lrm_fast.data.loading.load_rows (hub id, URL, local .json/.jsonl/.parquet file or
folder, catalogue entry; see lrm_fast/config/datasets.py) and are mapped onto problems by a Columns
mapping: a problem and an answer column, optionally an id and a list of offline correct solutions
(used by offline sample injection, PAPER.md §5). A dotted column name reaches into a struct
(``reward_model.ground_truth``); a chat column (verl's ``prompt``: a list of {role, content}) gives its
last user message, without the instruction a source declares its prompts end with (``strip_suffix``:
the run's template adds its own); a list answer (several accepted forms) keeps them all, and the grader
accepts any of them, as the study's does (Minerva lists 2 or 3 forms for 75 problems).

Errors: a column the dataset lacks raises ValueError naming the dataset, the split and the columns it
has; a bad row raises ValueError naming the file and the line (JSON Lines) or the row (1-based).

Simplifications: the whole split is read into memory; accepted forms that differ only in surrounding
white space are kept once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lrm_fast.config.datasets import Columns, DatasetSource, SourceKind, resolve_source
from lrm_fast.data.loading import load_rows

__all__ = [
    "Columns",
    "PromptExample",
    "RowError",
    "answers_field",
    "load_prompts",
    "read_examples",
    "solutions_field",
    "text_field",
    "to_example",
]


@dataclass(frozen=True)
class PromptExample:
    """One problem with its ground-truth answer (and any further accepted forms of it)."""

    id: str
    problem: str
    answer: str
    solutions: tuple[str, ...] = ()
    """Offline correct solutions (response text, without the prompt) for sample injection."""
    alternatives: tuple[str, ...] = ()
    """Other accepted forms of the answer (a list answer's elements after the first)."""

    @property
    def answers(self) -> tuple[str, ...]:
        """Every accepted form, `answer` first: what the grader compares a response with."""
        return (self.answer, *self.alternatives)


class RowError(ValueError):
    """A bad value in one row; the reader adds where the row is."""


def as_source(source: DatasetSource | str | Path, columns: Columns | None = None) -> DatasetSource:
    """A source from a config string or path (catalogue names resolved); `columns` replaces its mapping."""
    if not isinstance(source, DatasetSource):
        source = resolve_source(str(source))
    return source if columns is None else replace(source, columns=columns)


def load_prompts(source: DatasetSource | str | Path, columns: Columns | None = None) -> list[PromptExample]:
    """Every example of one dataset split, in order."""
    source = as_source(source, columns)
    mapping = source.columns
    return read_examples(
        source,
        (mapping.problem, mapping.answer),
        lambda record, index: to_example(record, mapping, str(index), source.strip_suffix),
    )


def read_examples(
    source: DatasetSource, required: Sequence[str], convert: Callable[[dict[str, Any], int], Any]
) -> list:
    """`convert(row, index)` of every row, after checking the dataset has the `required` columns; a
    RowError from `convert` becomes a ValueError naming the file and line (or row)."""
    rows = load_rows(source)
    for name in required:
        if not has_column(rows.features, name):
            found = ", ".join(rows.column_names) or "none"
            raise ValueError(f"{source.describe()}: no column {name!r} (columns: {found})")
    converted = []
    for index, record in enumerate(rows):
        try:
            converted.append(convert(record, index))
        except RowError as error:
            raise ValueError(f"{row_location(source, index)}: {error}") from None
    if not converted:
        raise ValueError(f"{source.describe()}: no examples")
    return converted


def has_column(features: dict[str, Any], name: str) -> bool:
    """Whether `name` is a column, or a dotted path into struct columns, of the dataset's features."""
    if name in features:
        return True
    head, _, rest = name.partition(".")
    return bool(rest) and isinstance(features.get(head), dict) and has_column(features[head], rest)


def field_value(record: dict[str, Any], name: str) -> Any:
    """The value of a column or dotted path in one row (None where absent or null)."""
    if name in record or "." not in name:
        return record.get(name)
    head, _, rest = name.partition(".")
    inner = record.get(head)
    return field_value(inner, rest) if isinstance(inner, dict) else None


def row_location(source: DatasetSource, index: int) -> str:
    """Where row `index` (0-based) is: ``file, line N`` for JSON Lines, else ``..., row N`` (1-based)."""
    path = Path(source.path)
    if source.kind != SourceKind.file:
        return f"{source.describe()}, row {index + 1}"
    if path.suffix.lower() == ".jsonl":  # datasets skips blank lines: the row is the index-th other line
        with path.open(encoding="utf-8") as lines:
            numbers = (number for number, line in enumerate(lines, start=1) if line.strip())
            return f"{path}, line {next(n for i, n in enumerate(numbers) if i == index)}"
    return f"{path}, row {index + 1}"


def to_example(
    record: dict[str, Any], columns: Columns, default_id: str, strip_suffix: str = ""
) -> PromptExample:
    """One row as a problem (without `strip_suffix` where it ends with it); a bad value raises RowError
    naming the column."""
    answer = field_value(record, columns.answer)
    for name, value in ((columns.problem, field_value(record, columns.problem)), (columns.answer, answer)):
        if value is None:
            found = ", ".join(key for key, value in record.items() if value is not None) or "none"
            raise RowError(f"no value in column {name!r} (the row has: {found})")
    first, *alternatives = answers_field(answer, columns.answer)
    return PromptExample(
        id=text_field(field_value(record, columns.id), columns.id, default=default_id),
        problem=_problem_text(field_value(record, columns.problem), columns.problem, strip_suffix),
        answer=first,
        solutions=solutions_field(field_value(record, columns.solutions), columns.solutions),
        alternatives=tuple(alternatives),
    )


def _problem_text(value: Any, name: str, strip_suffix: str) -> str:
    """The problem: a string, or the last user message of a chat (a list of {role, content})."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) for m in value):
        users = [m for m in value if m.get("role") == "user"] or list(value)
        value = users[-1].get("content")
    if isinstance(value, str) and strip_suffix:
        value = value.removesuffix(strip_suffix)
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"column {name!r} must be a non-empty string or a chat, got {value!r:.80}")
    return value


def answers_field(value: Any, name: str) -> list[str]:
    """Every accepted answer of a row, in order: one string or number, or a list of them (forms that differ
    only in surrounding white space, like Minerva's "188" and "188\\n", once)."""
    if not isinstance(value, (list, tuple)):
        return [text_field(value, name)]
    if not value:
        raise RowError(f"column {name!r} is an empty list")
    forms = {}
    for form in (text_field(element, name) for element in value):
        forms.setdefault(form.strip(), form)
    return list(forms.values())


def text_field(value: Any, name: str, default: str | None = None) -> str:
    """A string, or a number written as one (JSON answers are often bare integers)."""
    if value is None and default is not None:
        return default
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RowError(f"column {name!r} must be a string or a number, got {type(value).__name__}")


def solutions_field(value: Any, name: str) -> tuple[str, ...]:
    """A list of solution strings; a single string counts as a list of one, a missing value as none."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(solution, str) for solution in value):
        return tuple(value)
    raise RowError(f"column {name!r} must be a list of strings, got {value!r:.80}")
