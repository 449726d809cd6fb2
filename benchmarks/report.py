"""The compact table of the kernel benchmarks, from pytest-benchmark's --benchmark-json files or the
rows that benchmarks/conftest.py appends case by case to $LRM_FAST_BENCH_ROWS (*.jsonl).

    python -m benchmarks.report bench.json [more.json rows.jsonl ...] [--copy copy.json] [--versus naive]

One line per case: op, shape, provider, mode, median ms, GB/s over the floor bytes, that as a percentage of
the measured copy bandwidth (--copy, written by benchmarks/copy_bandwidth.py), peak memory in GiB.
--versus PROVIDER adds, for each op, shape and mode, every provider's time and peak memory as a multiple of
PROVIDER's. The same formatting prints the table at the end of a timed pytest run (benchmarks/conftest.py).
Standard library only, so that it runs wherever the JSON lands.
"""

import argparse
import json
import os

HEADER = ("op", "shape", "provider", "mode", "ms", "GB/s", "% copy", "peak GiB")


def row(info: dict, median_s: float | None) -> dict:
    """One table row from a benchmark's extra_info and its median time in seconds (None when not timed)."""
    peak = info.get("peak_mem_bytes")
    return {
        "op": info["op"],
        "shape": info["shape"],
        "provider": info["provider"],
        "mode": info["mode"],
        "ms": None if median_s is None else median_s * 1e3,
        "gbps": info.get("gbps"),
        "peak_gib": None if peak is None else peak / 2**30,
    }


def rows_from_json(path: str) -> list[dict]:
    """Table rows from a --benchmark-json file, or from a .jsonl file of rows (one per line)."""
    with open(path) as f:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        data = json.load(f)
    return [row(b["extra_info"], b["stats"]["median"]) for b in data["benchmarks"] if "op" in b["extra_info"]]


def format_table(rows: list[dict], copy_gbps: float | None = None) -> str:
    """Aligned text table; the "% copy" column only when the copy bandwidth is known."""
    header = HEADER if copy_gbps else tuple(h for h in HEADER if h != "% copy")
    lines = [header]
    for r in rows:
        numbers = [_number(r["ms"]), _number(r["gbps"])]
        if copy_gbps:
            numbers.append(_number(None if r["gbps"] is None else r["gbps"] / copy_gbps * 100))
        numbers.append("-" if r["peak_gib"] is None else f"{r['peak_gib']:.3f}")
        lines.append((r["op"], r["shape"], r["provider"], r["mode"], *numbers))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    # Text columns left-aligned, numbers right-aligned.
    aligned = [
        [
            cell.ljust(width) if i < 4 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        for line in lines
    ]
    return "\n".join("  ".join(cells).rstrip() for cells in aligned)


def format_versus(rows: list[dict], baseline: str) -> str:
    """Each provider's median time and peak memory as a multiple of `baseline`'s, per op, shape and mode."""
    base = {(r["op"], r["shape"], r["mode"]): r for r in rows if r["provider"] == baseline}
    lines = [f"time and peak memory as multiples of {baseline}'s:"]
    for r in rows:
        b = base.get((r["op"], r["shape"], r["mode"]))
        if b is None or r["provider"] == baseline:
            continue
        time = _ratio(r["ms"], b["ms"])
        peak = _ratio(r["peak_gib"], b["peak_gib"])
        lines.append(f"  {r['op']} {r['shape']} {r['mode']}: {r['provider']} time {time}, peak memory {peak}")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    """About three significant digits, never in exponent notation."""
    if value is None:
        return "-"
    decimals = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2 if abs(value) >= 1 else 3
    return f"{value:.{decimals}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def main(argv: list[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files, or .jsonl rows")
    parser.add_argument("--copy", help="JSON from benchmarks/copy_bandwidth.py")
    parser.add_argument("--versus", metavar="PROVIDER", help="also print ratios to this provider")
    args = parser.parse_args(argv)
    rows, missing = [], []
    for path in args.json:
        # A stage that failed or ran out of time leaves no file; say so and print the rest.
        if os.path.exists(path):
            rows += rows_from_json(path)
        else:
            missing.append(path)
    copy_gbps = None
    if args.copy and os.path.exists(args.copy):
        with open(args.copy) as f:
            copy = json.load(f)
        copy_gbps = copy["gbps"]
        print(f"copy bandwidth ({copy['device']}): {copy_gbps:.1f} GB/s (bytes read + written)")
    for path in missing:
        print(f"no results: {path}")
    print(format_table(rows, copy_gbps) if rows else "no benchmark results")
    if args.versus and rows:
        print(format_versus(rows, args.versus))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
