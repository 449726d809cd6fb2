"""A run's prompts by source: the built-in task's splits, or the configured datasets.

One function for the trainer and the evaluator, so that `lrm-fast-eval`'s `builtin:arithmetic` scores a
checkpoint on exactly the held-out problems its training run evaluated (at the default task settings).
"""

from lrm_fast.config import DataConfig, DifficultyConfig
from lrm_fast.config.choices import DataSource
from lrm_fast.config.datasets import DatasetSource, resolve_source
from lrm_fast.data.arithmetic import generate_problems, solutions
from lrm_fast.data.examples import PromptExample, load_prompts

# Stored correct solutions per built-in problem: the offline solution bank of injection=osi.
BANK_SOLUTIONS = 4


def arithmetic_examples(n: int, split: str, seed: int, difficulty: DifficultyConfig) -> list[PromptExample]:
    """`n` problems of one split of the built-in task, each with up to 4 valid step orders as solutions."""
    problems = generate_problems(n, split=split, seed=seed, settings=difficulty)
    return [
        PromptExample(
            id=p.id, problem=p.problem, answer=p.answer, solutions=tuple(solutions(p, BANK_SOLUTIONS))
        )
        for p in problems
    ]


def load_examples(data: DataConfig, num_heldout: int) -> tuple[list[PromptExample], list[PromptExample]]:
    """(train, held-out) prompts: the built-in task's splits or the configured datasets."""
    if data.name == DataSource.arithmetic:
        train = arithmetic_examples(data.train_problems, "train", data.seed, data.difficulty)
        heldout = arithmetic_examples(num_heldout, "held_out", data.seed + 1, data.difficulty)
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
