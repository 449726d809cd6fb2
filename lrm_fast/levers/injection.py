"""Offline sample injection (OSI, PAPER.md §5): put the too-hard groups to work.

For a group whose accuracy p_g is at most alpha (0.125: with G = 16 at most 2 correct), up to
k = min(cap, #incorrect, #available) of its incorrect responses are replaced by stored correct solutions
of the same problem. The trainer then grades the injected responses like any other and recomputes the
group's rewards and advantages, so the group has variance.

Solutions are response text without the prompt, tokenised without the chat template (the prompt
already ends with the assistant header), with the EOS token appended; a solution longer than the
response limit is skipped, as in the study. The update is on-policy (old log-probs are the current
policy's own, see lrm_fast/update.py), which is what "old log-probs recomputed by the current policy"
amounts to.

Choices the study leaves open, fixed here: the first k incorrect responses of the group are replaced
(all have reward 0, so which ones changes nothing but their lengths) by the first k usable solutions
of the bank.

The bank comes from the dataset's ``solutions`` column (the built-in task has one: several valid orders
of the reference steps) or from a separate jsonl file of ``{"id": ..., "solutions": [...]}`` lines keyed
by problem id.
"""

from pathlib import Path

from lrm_fast.data.examples import PromptExample, read_jsonl


def plan_injections(
    correct: list[bool], group_size: int, alpha: float, cap: int, available: list[int]
) -> list[tuple[int, int]]:
    """(response index, solution index) of every replacement, for consecutive groups of `group_size`.

    ``available[g]`` is the number of usable stored solutions of group g's problem.
    """
    if len(correct) != group_size * len(available):
        raise ValueError(f"{len(correct)} responses do not make {len(available)} groups of {group_size}")
    plan = []
    for g, num_solutions in enumerate(available):
        members = range(g * group_size, (g + 1) * group_size)
        if sum(correct[i] for i in members) / group_size > alpha:
            continue
        incorrect = [i for i in members if not correct[i]]
        k = min(cap, len(incorrect), num_solutions)
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
    """{problem id: solutions} from a jsonl file; a bad line raises ValueError naming file and line."""
    path, bank = Path(path).expanduser(), {}
    for where, record in read_jsonl(path):
        solutions = record.get("solutions")
        if isinstance(solutions, str):
            solutions = [solutions]
        valid = isinstance(solutions, list) and all(isinstance(s, str) for s in solutions)
        if "id" not in record or not valid:
            raise ValueError(f'{path}, {where}: expected {{"id": ..., "solutions": [strings]}}')
        bank[str(record["id"])] = tuple(solutions)
    return bank
