"""Rewards of a step's responses: binary correctness, or the Relative Length Reward (PAPER.md §4), and
optionally the repetition reward (PAPER.md §5) and DAPO's soft overlong punishment added to either.

RLR puts the too-easy groups to work. For a group whose accuracy p_g is at least tau, every correct
response i gets

    r_i = 1 + clip((mean_len_correct_g - len_i) / b, lo, hi)

where mean_len_correct_g is the mean length (in response tokens) of the group's correct responses.
Incorrect responses keep 0, and groups below tau keep their 0/1 rewards. The group normalisation runs
afterwards as usual, so an all-correct group now has variance (unless all its lengths are equal) and
prefers its shorter correct answers. Defaults are the study's script values: tau 0.75, b 500, lo -0.5,
hi 1.

The repetition reward (the study's deepscaler.py:110-142, used by its OSI run) penalises incorrect
responses that loop. With the text lower-cased and split on whitespace into words w_1..w_m, the word
n-grams are (w_j, ..., w_{j+n-1}) for j = 1..m-n+1, and an incorrect response gets

    r_i += (1 - distinct / total) * repetition_penalty        (0 when m < n: no n-gram)

so a response of all-distinct n-grams loses nothing and one that repeats a single n-gram loses almost
all of |repetition_penalty| (study: -2 with n = 40). As in the study the text is the decoded prompt
followed by the response, special tokens included, and correct responses are never penalised.

DAPO's soft overlong punishment (Yu et al. 2025, eq. 13) gives every response of length L, correct or
not, with L_max the response window and L_cache the buffer before it,

    r_i += 0                                    L <= L_max - L_cache
    r_i += (L_max - L_cache - L) / L_cache * p   L_max - L_cache < L <= L_max

falling from 0 to -p (overlong_penalty; DAPO: 1) over the last L_cache tokens. A response cannot exceed
L_max here (generation stops there), so DAPO's -1 beyond it never applies; verl's DAPO reward manager
computes the same min(-(L - (L_max - L_cache)) / L_cache * p, 0).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ShapedRewards:
    rewards: list[float]
    shaped_groups: int  # groups whose correct responses were length-shaped


def binary_rewards(correct: list[bool]) -> list[float]:
    return [1.0 if c else 0.0 for c in correct]


def relative_length_rewards(
    correct: list[bool], lengths: list[int], group_size: int, tau: float, b: float, lo: float, hi: float
) -> ShapedRewards:
    """RLR rewards of consecutive groups of `group_size` responses (see the module docstring)."""
    if len(correct) != len(lengths) or len(correct) % group_size:
        raise ValueError(
            f"need as many lengths as responses and whole groups of {group_size}, "
            f"got {len(correct)} responses and {len(lengths)} lengths"
        )
    rewards, shaped = binary_rewards(correct), 0
    for start in range(0, len(correct), group_size):
        members = range(start, start + group_size)
        correct_members = [i for i in members if correct[i]]
        if not correct_members or len(correct_members) / group_size < tau:
            continue
        shaped += 1
        mean_length = sum(lengths[i] for i in correct_members) / len(correct_members)
        for i in correct_members:
            rewards[i] = 1.0 + min(max((mean_length - lengths[i]) / b, lo), hi)
    return ShapedRewards(rewards, shaped)


def distinct_ngrams(text: str, n: int) -> tuple[int, int]:
    """(distinct, total) word n-grams of `text`, words being its lower-cased whitespace-separated parts."""
    words = text.lower().split()
    ngrams = [tuple(words[j : j + n]) for j in range(len(words) - n + 1)]
    return len(set(ngrams)), len(ngrams)


def repetition_penalties(texts: list[str], correct: list[bool], n: int, max_penalty: float) -> list[float]:
    """The repetition reward of each response (see the module docstring); 0 for correct ones."""
    penalties = []
    for text, is_correct in zip(texts, correct, strict=True):
        distinct, total = (0, 0) if is_correct else distinct_ngrams(text, n)
        penalties.append((1 - distinct / total) * max_penalty if total else 0.0)
    return penalties


def overlong_penalties(lengths: list[int], max_length: int, buffer: int, penalty: float) -> list[float]:
    """DAPO's soft overlong punishment of each response length (see the module docstring)."""
    if not 0 < buffer < max_length:
        raise ValueError(f"the overlong buffer must be in (0, {max_length}), got {buffer}")
    expected = max_length - buffer
    return [min(-(length - expected) / buffer * penalty, 0.0) for length in lengths]
