"""A run's prompts by source: a built-in task's splits, or the configured datasets.

One function for the trainer and the evaluator, so that `lrm-fast-eval`'s `builtin:arithmetic` scores a
checkpoint on exactly the held-out problems its training run evaluated (at the default task settings).

The two built-in tasks, arithmetic (lrm_fast/data/arithmetic.py) and long_arithmetic
(lrm_fast/data/long_arithmetic.py), have the same functions (generate_problems, solutions,
teacher_solution); the type of a task's settings says which module serves it.
"""

from types import ModuleType

from lrm_fast.config import DataConfig, DifficultyConfig, LongDifficultyConfig
from lrm_fast.config.choices import DataSource
from lrm_fast.config.datasets import DatasetSource, resolve_source
from lrm_fast.data import arithmetic, long_arithmetic
from lrm_fast.data.examples import PromptExample, load_prompts

# Stored correct solutions per built-in problem: the offline solution bank of injection=osi.
BANK_SOLUTIONS = 4

BuiltinTask = DifficultyConfig | LongDifficultyConfig


def builtin_task(data: DataConfig) -> BuiltinTask:
    """The settings of the built-in task that `data` names; the arithmetic task's for data=file (the task
    the tiny model's cold start learns when the data is not a built-in task)."""
    return data.long_difficulty if data.name == DataSource.long_arithmetic else data.difficulty


def task_module(task: BuiltinTask) -> ModuleType:
    """The module that generates and solves the problems of `task`."""
    return long_arithmetic if isinstance(task, LongDifficultyConfig) else arithmetic


def builtin_examples(n: int, split: str, seed: int, task: BuiltinTask) -> list[PromptExample]:
    """`n` problems of one split of a built-in task, each with up to 4 stored correct solutions."""
    module = task_module(task)
    problems = module.generate_problems(n, split=split, seed=seed, settings=task)
    return [
        PromptExample(
            id=p.id, problem=p.problem, answer=p.answer, solutions=tuple(module.solutions(p, BANK_SOLUTIONS))
        )
        for p in problems
    ]


def load_examples(data: DataConfig, num_heldout: int) -> tuple[list[PromptExample], list[PromptExample]]:
    """(train, held-out) prompts: a built-in task's splits or the configured datasets."""
    if data.name != DataSource.file:
        task = builtin_task(data)
        train = builtin_examples(data.train_problems, "train", data.seed, task)
        heldout = builtin_examples(num_heldout, "held_out", data.seed + 1, task)
        return train, heldout
    train = load_prompts(data_source(data, data.train_path, data.train_split))
    heldout_source = data_source(data, data.heldout_path, data.heldout_split) if data.heldout_path else None
    heldout = load_prompts(heldout_source)[:num_heldout] if heldout_source else []
    return train, heldout


def data_source(data: DataConfig, path: str, split: str | None) -> DatasetSource:
    """The dataset `path` names (a catalogue entry, or the path itself) with the data config's settings."""
    columns = {
        "problem": data.problem_key,
        "answer": data.answer_key,
        "id": data.id_key,
        "solutions": data.solutions_key,
    }
    return resolve_source(path, subset=data.subset, split=split, revision=data.revision, columns=columns)
