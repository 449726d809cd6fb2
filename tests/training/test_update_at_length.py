"""benchmarks/update_at_length.py: one GRPO update per point of the two sweeps, and its report's slopes."""

import json

import pytest

from benchmarks import update_at_length as U
from benchmarks import update_at_length_report as R


@pytest.mark.parametrize(("tokens", "length"), [(8192, 128), (8192, 4096), (2048, 512), (100, 7)])
def test_response_lengths_fill_the_step_exactly_with_the_limit_as_longest(tokens, length):
    lengths = U.response_lengths(tokens, length)
    assert sum(lengths) == tokens and max(lengths) == length and min(lengths) >= 1
    assert len(lengths) >= 2 or tokens == length


@pytest.mark.parametrize("length", [128, 512, 1024, 2048, 4096])
def test_with_prompts_the_step_holds_its_tokens_short_by_at_most_one_prompt(length):
    lengths = U.response_lengths(8192, length, prompt_tokens=32)
    step = sum(lengths) + 32 * len(lengths)
    assert 8192 - 32 <= step <= 8192 and max(lengths) == length and min(lengths) >= 1


def test_a_step_shorter_than_the_limit_is_refused():
    with pytest.raises(ValueError, match="one response at the limit"):
        U.response_lengths(100, 128)
    with pytest.raises(ValueError, match="one response at the limit"):
        U.response_lengths(140, 128, prompt_tokens=32)


def test_both_sweeps_run_every_path_and_report_tokens_and_memory(tmp_path, one_thread):
    out = tmp_path / "rows.json"
    paths = ["packed-fused-ckpt", "padded-logits-full"]
    argv = "--lengths 16 32 --tokens 256 --length 16 --token-counts 32 64 128 --device cpu"
    rows = U.main([*argv.split(), "--paths", *paths, "--out", str(out)])
    assert rows == json.loads(out.read_text())
    assert [(r["path"], r["sweep"]) for r in rows] == [
        (path, sweep) for path in paths for sweep in ["length"] * 2 + ["tokens"] * 3
    ]
    for row in rows:
        assert "error" not in row and row["seconds"] > 0 and row["peak_bytes"] > 0 and row["timed_calls"] == 1
        prompts = U.PROMPT_TOKENS * row["responses"]
        assert row["step_tokens"] == row["tokens"] + prompts
        if row["sweep"] == "length":  # prompts and responses fill the step (within one prompt)
            assert 256 - U.PROMPT_TOKENS <= row["step_tokens"] <= 256
        else:
            assert row["tokens"] in (32, 64, 128)
        lengths = U.response_lengths(
            row["tokens"] + (prompts if row["sweep"] == "length" else 0),
            row["length"],
            U.PROMPT_TOKENS if row["sweep"] == "length" else 0,
        )
        assert (len(lengths), sum(lengths)) == (row["responses"], row["tokens"])
        # Packed: one row of real tokens; padded: every row as long as the longest.
        packed = row["path"].startswith("packed")
        expected = row["step_tokens"] if packed else len(lengths) * (U.PROMPT_TOKENS + max(lengths))
        assert row["forward_tokens"] == expected
    logits = [r for r in rows if r["path"] == "padded-logits-full" and r["sweep"] == "tokens"]
    fused = [r for r in rows if r["path"] == "packed-fused-ckpt" and r["sweep"] == "tokens"]
    # 128 tokens of 32k fp32 logits and their gradient: 32 MB the fused head never holds.
    assert logits[-1]["peak_bytes"] > fused[-1]["peak_bytes"] + 16 * 2**20
    table = R.markdown(rows)
    assert all(path in table for path in paths) and "KiB / token" in table


def test_zero_repeats_times_the_peak_update_itself(tmp_path, one_thread):
    argv = "--sweep length --lengths 16 --tokens 128 --repeats 0 --device cpu --paths packed-fused-full"
    [row] = U.main(argv.split())
    assert row["timed_calls"] == 0 and row["seconds"] > 0


def test_linear_fit_recovers_a_line_and_measures_the_worst_residual():
    intercept, slope, worst = R.linear_fit([1, 2, 4, 8], [10 + 3 * x for x in (1, 2, 4, 8)])
    assert (intercept, slope, worst) == pytest.approx((10, 3, 0), abs=1e-9)
    _, _, worst = R.linear_fit([1, 2, 3], [1, 3, 2])
    assert worst == pytest.approx(0.5)  # the line 1 + 0.5 x misses the first point by 0.5: half of it
