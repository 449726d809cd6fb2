"""Pairwise covering arrays: few rows in which every pair of levels of any two factors appears at least once.

Greedy, as AETG (Cohen et al. 1997): each new row starts from a pair not yet covered, then takes, factor by
factor in a random order, the level that covers the most uncovered pairs with the levels chosen so far; of
`candidates` such rows the one covering most is kept. Seeded: the same factors give the same rows.
"""

import itertools
import random


def covering_array(factors: dict[str, list], seed: int = 0, candidates: int = 20) -> list[dict]:
    """Rows (factor -> level) covering every pair of levels of every two factors."""
    order = {name: i for i, name in enumerate(factors)}

    def pair(first: tuple[str, int], second: tuple[str, int]) -> tuple:
        return (first, second) if order[first[0]] < order[second[0]] else (second, first)

    uncovered = {
        ((a, x), (b, y))
        for a, b in itertools.combinations(factors, 2)
        for x in range(len(factors[a]))
        for y in range(len(factors[b]))
    }
    rng = random.Random(seed)
    rows = []
    while uncovered:
        best, best_covered = None, set()
        for _ in range(candidates):
            (a, x), (b, y) = rng.choice(sorted(uncovered))
            row = {a: x, b: y}
            for name in rng.sample(list(factors), len(factors)):
                if name in row:
                    continue
                gains = [
                    sum(pair((name, level), (other, row[other])) in uncovered for other in row)
                    for level in range(len(factors[name]))
                ]
                row[name] = rng.choice([level for level, gain in enumerate(gains) if gain == max(gains)])
            covered = {pair((a, row[a]), (b, row[b])) for a, b in itertools.combinations(row, 2)} & uncovered
            if len(covered) > len(best_covered):
                best, best_covered = row, covered
        rows.append(best)
        uncovered -= best_covered
    return [{name: factors[name][row[name]] for name in factors} for row in rows]
