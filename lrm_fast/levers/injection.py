"""Offline sample injection (OSI, PAPER.md §5): put the too-hard groups to work.

For a group whose accuracy p_g is at most alpha (0.125: with G = 16 at most 2 correct), up to
k = min(cap, #incorrect, #available) of its incorrect responses are replaced by stored correct solutions
of the same problem. The trainer then grades the injected responses like any other and recomputes the
group's rewards and advantages. Whether the group then has variance depends on the cap: it becomes
all correct (zero advantage again) when k equals its number of incorrect responses, that is when both
the cap and the usable solutions reach that number (and every injected solution grades correct).

    cap c        (the embedded task: 1) with c < G - #correct some incorrect response stays: an all-wrong
                 group gets c correct responses among G - c wrong ones, and trains.
    no cap       (null; the study's max_inject_num = -1, ppo_trainer.yaml:184, kept by its released run;
                 it treats any value <= 0 as none, ray_trainer.py:863) every incorrect response is replaced
                 while solutions last: an all-wrong group with at least G usable solutions becomes all
                 correct and has zero advantage again; one with fewer keeps variance.

Solutions are response text without the prompt, tokenised without the chat template (the prompt
already ends with the assistant header), with the EOS token appended; a solution longer than the
response limit is skipped, as in the study. Their old log-probs are the current policy's, like every
response's (lrm_fast/training/update.py), which is what "old log-probs recomputed by the current policy"
amounts to.

Choices the study leaves open, fixed here: the first k incorrect responses of the group are replaced
(all have reward 0, so which ones changes nothing but their lengths) by the first k usable solutions
of the bank.

The bank comes from the dataset's solutions column (the built-in task has one: several valid orders of
the reference steps; the study's OSI file has ``offline_samples_str_list``) or from a separate dataset
by name (any source the training data accepts, read by the same function) with ``id`` and ``solutions``
columns, keyed by problem id.
"""

from pathlib import Path

from lrm_fast.data.examples import (
    PromptExample,
    RowError,
    as_source,
    field_value,
    read_examples,
    solutions_field,
    text_field,
)


def plan_injections(
    correct: list[bool], group_size: int, alpha: float, cap: int | None, available: list[int]
) -> list[tuple[int, int]]:
    """(response index, solution index) of every replacement, for consecutive groups of `group_size`.

    ``available[g]`` is the number of usable stored solutions of group g's problem; ``cap`` None: no cap.
    """
    if len(correct) != group_size * len(available):
        raise ValueError(f"{len(correct)} responses do not make {len(available)} groups of {group_size}")
    plan = []
    for g, num_solutions in enumerate(available):
        members = range(g * group_size, (g + 1) * group_size)
        if sum(correct[i] for i in members) / group_size > alpha:
            continue
        incorrect = [i for i in members if not correct[i]]
        k = min(len(incorrect), num_solutions) if cap is None else min(cap, len(incorrect), num_solutions)
        plan += list(zip(incorrect[:k], range(k), strict=True))
    return plan


class SolutionBank:
    """Tokenised stored solutions per problem, filtered by the response limit (cached per problem)."""

    def __init__(self, tokenizer, max_new_tokens: int, solutions_by_id: dict[str, tuple[str, ...]] | None):
        """``solutions_by_id`` None: read each example's own ``solutions``."""
        self.tokenizer, self.max_new_tokens = tokenizer, max_new_tokens
        self.solutions_by_id = solutions_by_id
        self._cache: dict[str, list[list[int]]] = {}

    def solutions(self, example: PromptExample) -> list[list[int]]:
        if example.id not in self._cache:
            by_id = self.solutions_by_id
            texts = example.solutions if by_id is None else by_id.get(example.id, ())
            eos = self.tokenizer.eos_token or ""
            encoded = [self.tokenizer(text + eos, add_special_tokens=False)["input_ids"] for text in texts]
            self._cache[example.id] = [ids for ids in encoded if 0 < len(ids) <= self.max_new_tokens]
        return self._cache[example.id]


def load_solution_bank(path: str | Path) -> dict[str, tuple[str, ...]]:
    """{problem id: solutions} of a dataset: a catalogue entry (its own id and solutions columns) or a
    file, folder, URL or hub id with `id` and `solutions` columns. A bad row raises ValueError naming
    the file and line (or row)."""
    source = as_source(path)
    columns = source.columns

    def entry(record: dict, index: int) -> tuple[str, tuple[str, ...]]:
        problem_id = field_value(record, columns.id)
        if problem_id is None:
            raise RowError(f"no value in column {columns.id!r} (the bank is keyed by problem id)")
        solutions = field_value(record, columns.solutions)
        return text_field(problem_id, columns.id), solutions_field(solutions, columns.solutions)

    return dict(read_examples(source, (columns.id, columns.solutions), entry))
