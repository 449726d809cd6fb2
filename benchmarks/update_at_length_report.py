"""Tables, slopes and the plot of benchmarks/update_at_length.py's rows.

    python -m benchmarks.update_at_length_report docs/perf/update_at_length.json [--plot]

Length sweep: the spread of each path's peak memory over the limits (max / min): the fused head's promise
is that memory follows the tokens of a step, not their length. Tokens sweep: a least-squares line through
each path's peaks, peak = intercept + slope x the step's tokens (prompts and responses, no padding), with
the slope in KiB per token, the largest residual as a share of the peak, and the slope over V x 4 bytes
(what fp32 logits of the head alone would add per token; V from the rows).
"""

import argparse
import json
from pathlib import Path

MIB = 2**20


def _rows(rows: list[dict], sweep: str, path: str) -> list[dict]:
    return sorted(
        (r for r in rows if r["sweep"] == sweep and r["path"] == path and "error" not in r),
        key=lambda r: (r["length"], r["tokens"]),
    )


def paths_of(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["path"] for r in rows))


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Intercept, slope and the largest |residual| / y of the least-squares line y = a + b x."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    worst = max(abs(y - intercept - slope * x) / y for x, y in zip(xs, ys, strict=True))
    return intercept, slope, worst


def length_summary(rows: list[dict]) -> list[dict]:
    summary = []
    for path in paths_of(rows):
        points = _rows(rows, "length", path)
        if len(points) < 2:
            continue
        peaks = [p["peak_bytes"] for p in points]
        summary.append(
            {
                "path": path,
                "peak_MiB": [round(p / MIB) for p in peaks],
                "spread": max(peaks) / max(min(peaks), 1),
                "seconds": [round(p["seconds"], 2) for p in points],
            }
        )
    return summary


def tokens_summary(rows: list[dict]) -> list[dict]:
    summary = []
    for path in paths_of(rows):
        points = _rows(rows, "tokens", path)
        if len(points) < 3:
            continue
        steps = [p["step_tokens"] for p in points]
        intercept, slope, worst = linear_fit(steps, [p["peak_bytes"] for p in points])
        summary.append(
            {
                "path": path,
                "peak_MiB": [round(p["peak_bytes"] / MIB) for p in points],
                "slope_KiB_per_token": slope / 1024,
                "intercept_MiB": intercept / MIB,
                "worst_residual": worst,
                "slope_over_logits": slope / (points[0]["vocab_size"] * 4),
                "seconds": [round(p["seconds"], 2) for p in points],
            }
        )
    return summary


def markdown(rows: list[dict]) -> str:
    lengths = sorted({r["length"] for r in rows if r["sweep"] == "length"})
    tokens = sorted(
        {r["step_tokens"] for r in rows if r["sweep"] == "tokens" and r["path"] == rows[0]["path"]}
    )
    lines = [f"Length sweep (L = {', '.join(map(str, lengths))}): peak MiB, spread, seconds", ""]
    lines += ["| path | peak MiB | max / min | s per update |", "|---|---|---|---|"]
    for s in length_summary(rows):
        lines.append(f"| {s['path']} | {s['peak_MiB']} | {s['spread']:.2f} | {s['seconds']} |")
    lines += ["", f"Tokens sweep (tokens = {', '.join(map(str, tokens))}): line through the peaks", ""]
    lines += ["| path | peak MiB | KiB / token | intercept MiB | worst residual | slope / (V x 4 B) | s |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for s in tokens_summary(rows):
        lines.append(
            f"| {s['path']} | {s['peak_MiB']} | {s['slope_KiB_per_token']:.1f} | {s['intercept_MiB']:.0f} | "
            f"{s['worst_residual']:.1%} | {s['slope_over_logits']:.2f} | {s['seconds']} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    for col, (sweep, x_key, x_label) in enumerate(
        (("length", "length", "response limit L (tokens)"), ("tokens", "step_tokens", "tokens per step"))
    ):
        for path in paths_of(rows):
            points = _rows(rows, sweep, path)
            style = dict(marker="o", linestyle="-" if "fused" in path else "--", label=path)
            xs = [p[x_key] for p in points]
            axes[0, col].plot(xs, [p["seconds"] for p in points], **style)
            axes[1, col].plot(xs, [p["peak_bytes"] / MIB for p in points], **style)
        ticks = sorted({r[x_key] for r in rows if r["sweep"] == sweep})
        for row, y_label in enumerate(("seconds per update", "peak memory (MiB)")):
            axes[row, col].set(xscale="log", yscale="log", xlabel=x_label, ylabel=y_label)
            axes[row, col].set_xticks(ticks, [str(t) for t in ticks])
            axes[row, col].xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"One GRPO update at length: {rows[0]['shape']}, V = {rows[0]['vocab_size']}")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=Path)
    parser.add_argument("--plot", action="store_true", help="write the plot beside the rows (.png)")
    args = parser.parse_args(argv)
    rows = json.loads(args.rows.read_text())
    print(markdown(rows))
    if args.plot:
        plot(rows, args.rows.with_suffix(".png"))


if __name__ == "__main__":
    main()
