"""Prompt datasets from local files, the study's prompt template, and a resumable prompt sampler.

A dataset is a JSON Lines file (one object per line) or a Parquet file (needs pyarrow) with a
problem and an answer column, optionally an id and a list of offline correct solutions (used by
offline sample injection, PAPER.md §5). Column names are configurable. Every row is checked when
loading, and a bad row raises ValueError naming the file and the line (JSON Lines) or row (Parquet).

The prompt is DeepScaleR's template, ``{problem} Let's think step by step and output the final answer
within \\boxed{}.``, sent as one user turn through the tokenizer's chat template.

The sampler draws batches of distinct prompts from a per-epoch permutation that depends only on
(seed, epoch), so its whole state is (epoch, position) and a resumed run draws exactly the batches
the interrupted run would have drawn.

Simplifications: the whole file is read into memory; the last incomplete batch of each epoch is
dropped (every batch has the same size, as the group statistics and learning rate assume); a
tokenizer without a chat template gets the templated text as is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEEPSCALER_TEMPLATE = "{problem} Let's think step by step and output the final answer within \\boxed{}."


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


# ------------------------------------------------------------------------------------------- loading


def load_prompts(path: str | Path, columns: Columns = Columns()) -> list[PromptExample]:
    """Read every example of a ``.jsonl`` or ``.parquet`` file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    if path.suffix == ".jsonl":
        records = _read_jsonl(path)
    elif path.suffix == ".parquet":
        records = _read_parquet(path)
    else:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r} (expected .jsonl or .parquet)")
    examples = [
        _to_example(record, columns, default_id=str(index), where=f"{path}, {where}")
        for index, (where, record) in enumerate(records)
    ]
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
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


def _read_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``"row N"``, record) for every row (1-based, like line numbers)."""
    try:
        import pyarrow.parquet as pq  # optional: only Parquet files need it
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow: pip install 'lrm-fast[parquet]'") from None
    for row_number, record in enumerate(pq.read_table(path).to_pylist(), start=1):
        yield f"row {row_number}", record


def _to_example(record: dict[str, Any], columns: Columns, default_id: str, where: str) -> PromptExample:
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


# ------------------------------------------------------------------------------------------- prompts


def format_prompt(problem: str, tokenizer: Any, template: str = DEEPSCALER_TEMPLATE) -> str:
    """The prompt text: the template around the problem, as one user turn of the chat template."""
    if "{problem}" not in template:
        raise ValueError(f"template must contain '{{problem}}': {template!r}")
    # replace, not str.format: templates are full of LaTeX braces.
    content = template.replace("{problem}", problem)
    if tokenizer.chat_template is None:
        return content
    messages = [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompts(
    examples: Sequence[PromptExample], tokenizer: Any, template: str = DEEPSCALER_TEMPLATE
) -> list[list[int]]:
    """Prompt token ids of each example, ready for a rollout backend."""
    # A chat template writes its own special tokens (BOS included); adding them again would double them.
    add_special_tokens = tokenizer.chat_template is None
    texts = [format_prompt(example.problem, tokenizer, template) for example in examples]
    return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]


# ------------------------------------------------------------------------------------------- sampler


class PromptSampler:
    """Batches of ``batch_size`` distinct examples, reshuffled every epoch, resumable exactly.

    Epoch e visits the examples in the order ``permutation(seed, e)``; ``position`` counts the
    examples of that order already drawn. Draw with ``next_batch()`` or by iterating (endless).
    """

    def __init__(self, examples: Sequence[PromptExample], batch_size: int, seed: int = 0):
        if not 1 <= batch_size <= len(examples):
            raise ValueError(
                f"batch_size must be in [1, {len(examples)}] (the number of examples), got {batch_size}"
            )
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(self.epoch)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.examples) // self.batch_size

    def _permutation(self, epoch: int) -> np.ndarray:
        # Seeded by (seed, epoch) alone, so no generator state needs saving.
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def next_batch(self) -> list[PromptExample]:
        if self.position + self.batch_size > len(self.examples):
            self.epoch += 1
            self.position = 0
            self._order = self._permutation(self.epoch)
        indices = self._order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return [self.examples[index] for index in indices]

    def __iter__(self) -> Iterator[list[PromptExample]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        """Plain integers (JSON-safe); the dataset size and batch size are kept to check a resume."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_examples": len(self.examples),
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        current = self.state_dict()
        for key in ("seed", "num_examples", "batch_size"):
            if state[key] != current[key]:
                raise ValueError(
                    f"cannot resume: the saved sampler has {key}={state[key]}, this one {key}={current[key]}"
                )
        self.epoch = state["epoch"]
        self.position = state["position"]
        self._order = self._permutation(self.epoch)
