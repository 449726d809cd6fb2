"""`lrm-fast-report`: the configurations of `lrm-fast-train` runs compared over seeds (lrm_fast/sweeps).

    lrm-fast-report multirun/2026-11-27/10-00-00
    lrm-fast-report multirun/DATE/TIME_A multirun/DATE/TIME_B outputs/DATE/TIME --out docs/sweeps/regimes
    lrm-fast-report multirun/DATE/TIME --baseline multirun/DATE/TIME/0     (the configuration of job 0)
    lrm-fast-report multirun/DATE/TIME --budget 2e6          (compare at 2 million generated tokens)

Prints the Markdown table and the study's headline quantities against a baseline configuration (by
default the one without overrides of its own, else the first; lrm_fast/sweeps/headline.py), and writes
report.md, report.json, training_curves.png, pass_at_k.png and response_length.png to --out (default:
FIRST_PATH/report). When the runs log generated tokens, it also compares the configurations at an equal
generated-token budget (by default the tokens the baseline generated; lrm_fast/sweeps/budget.py): one
more table, and accuracy_vs_tokens.png.
"""

import argparse
import math
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lrm-fast-report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="Hydra multirun directories or run directories")
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: FIRST_PATH/report)"
    )
    parser.add_argument(
        "--window",
        type=int,
        default=None,
        help="moving-average window of the training curves, in steps (default: 5%% of the steps)",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="baseline of the headline quantities: a run or sweep directory, or a configuration's label "
        "(default: the configuration without overrides of its own, else the first)",
    )
    parser.add_argument(
        "--budget",
        type=_token_count,
        default=None,
        metavar="TOKENS",
        help="generated-token budget of the equal-budget comparison, e.g. 2e6 (default: the baseline's "
        "generated tokens, mean over its seeds); used only when the runs log generated tokens",
    )
    return parser.parse_args(argv)


def _token_count(text: str) -> float:
    tokens = float(text)
    if not (math.isfinite(tokens) and tokens >= 0):
        raise argparse.ArgumentTypeError(f"a token budget is a finite count >= 0, got {text}")
    return tokens


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # matplotlib (pulled in by the report module) only after the arguments are known to be valid
    from lrm_fast.sweeps.matched import matched_markdown
    from lrm_fast.sweeps.report import (
        BUDGET_PLOT,
        PLOT_NAMES,
        budget_line,
        build_report,
        format_budget,
        format_headline,
        format_table,
    )

    out_dir = args.out or args.paths[0] / "report"
    try:
        report = build_report(
            args.paths, out_dir, window=args.window, baseline=args.baseline, budget=args.budget
        )
    except ValueError as error:  # a --baseline that names no configuration
        sys.exit(f"lrm-fast-report: error: {error}")
    print(format_table(report))
    print(f"\nbaseline: {report['baseline']['label']} ({report['baseline']['reason']})")
    print(format_headline(report))
    plots = PLOT_NAMES
    if report["budget"] is not None:
        print(f"\nat an equal generated-token budget. {budget_line(report['budget'])}")
        print(format_budget(report))
        plots = (*plots, BUDGET_PLOT)
    if report["matched"] is not None:
        print("\n" + matched_markdown(report["matched"]))
    for name in ("report.md", "report.json", *plots):
        print(f"wrote {out_dir / name}")


if __name__ == "__main__":
    main()
