"""`lrm-fast-eval-compare`: is checkpoint B really better than A, and how many samples would tell?

Reads two results.json files of `lrm-fast-eval` and prints, for every benchmark both evaluated (or the
one named), the paired comparison B - A on the same problems (lrm_fast/evaluation/variance.py: mean
difference, clustered standard error, interval, p-value, flipped problems) and a planner table: the
samples per problem a paired comparison needs to detect --difference with --power at --alpha, with A as
the pilot. Exits with status 1 and a message naming the first differing problem when the two files
evaluated different problems.

    lrm-fast-eval-compare outputs/base/results.json outputs/step500/results.json --difference 0.03

Per-problem accuracy is the pooled c_i / n_i over every round of the run (see eval_variance).
"""

import argparse
import json
import sys
from pathlib import Path

from lrm_fast.evaluation.variance import ProblemResults, paired_comparison, plan_samples, problem_results

# evaluation.multi_round.RUN_FORMAT, not imported from there: that module pulls in torch (seconds).
RUN_FORMAT = 1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lrm-fast-eval-compare", description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="results.json of the baseline A (also the planner's pilot)")
    parser.add_argument("b", type=Path, help="results.json of B; differences are B - A")
    parser.add_argument("--benchmark", help="compare only this benchmark (default: all in both files)")
    parser.add_argument("--difference", type=float, default=0.05, help="difference to plan for (0.05)")
    parser.add_argument("--power", type=float, default=0.8, help="planned power (0.8)")
    parser.add_argument("--alpha", type=float, default=0.05, help="test level; the CI is 1 - alpha (0.05)")
    return parser.parse_args(argv)


def load_results(path: Path) -> dict[str, ProblemResults]:
    """Per-problem results of every benchmark in a run file that has at least one finished round."""
    run = json.loads(path.read_text(encoding="utf-8"))
    if run.get("format") != RUN_FORMAT:
        raise ValueError(f"{path}: not an lrm-fast-eval run file of format {RUN_FORMAT}")
    results = {name: problem_results(entry) for name, entry in run.get("benchmarks", {}).items()}
    return {name: result for name, result in results.items() if result is not None}


def benchmarks_to_compare(a: dict, b: dict, args: argparse.Namespace) -> list[str]:
    if args.benchmark is not None:
        for path, results in ((args.a, a), (args.b, b)):
            if args.benchmark not in results:
                raise ValueError(
                    f"{path} has no evaluated benchmark {args.benchmark!r} (has {sorted(results)})"
                )
        return [args.benchmark]
    common = [name for name in a if name in b]
    if not common:
        raise ValueError(f"no benchmark evaluated in both files ({sorted(a)} vs {sorted(b)})")
    return common


def format_comparison(name: str, a: ProblemResults, b: ProblemResults, args: argparse.Namespace) -> str:
    """The paired comparison of one benchmark and its planner table, in percentage points."""
    try:
        result = paired_comparison(a, b, level=1 - args.alpha)
    except ValueError as error:
        raise ValueError(f"benchmark {name!r} of {args.a} and {args.b}: {error}") from error
    lines = [
        f"{name}: B - A on {result.problems} problems "
        f"(A {100 * result.score_a:.2f}, B {100 * result.score_b:.2f})",
        f"  difference {100 * result.difference:+.2f} +- {100 * result.standard_error:.2f} "
        f"(sampling only {100 * result.sampling_standard_error:.2f}), {100 * result.level:g}% CI "
        f"[{100 * result.ci_low:+.2f}, {100 * result.ci_high:+.2f}], p = {result.p_value:.3g}",
        f"  per problem: B better on {result.b_better}, worse on {result.b_worse}, equal on {result.ties}; "
        f"flips at 50%: B gains {_ids(result.gained)}, loses {_ids(result.lost)}",
        f"  planner (pilot A, same difference on every problem): detect {100 * args.difference:g} points "
        f"with power {args.power:g} at alpha {args.alpha:g}",
    ]
    rows = plan_samples(a.n, a.c, args.difference, args.power, args.alpha)
    table = [["problems", "samples/problem", "SE", "power"]] + [
        [
            str(row["problems"]),
            "-" if row["samples_per_problem"] is None else str(row["samples_per_problem"]),
            f"{100 * row['standard_error']:.2f}",
            f"{row['power']:.2f}",
        ]
        for row in rows
    ]
    widths = [max(len(row[j]) for row in table) for j in range(len(table[0]))]
    lines += [
        "    " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    return "\n".join(lines)


def _ids(ids: list[str], shown: int = 5) -> str:
    if not ids:
        return "0"
    more = f", +{len(ids) - shown} more" if len(ids) > shown else ""
    return f"{len(ids)} ({', '.join(ids[:shown])}{more})"


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        a, b = load_results(args.a), load_results(args.b)
        reports = [
            format_comparison(name, a[name], b[name], args) for name in benchmarks_to_compare(a, b, args)
        ]
    except (ValueError, OSError) as error:
        print(f"lrm-fast-eval-compare: error: {error}", file=sys.stderr)
        return 1
    print("\n\n".join(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
