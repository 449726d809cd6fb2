"""Partial rollouts in the asynchronous pipeline (rollout.partial_steps): in-process runs of the quick config
with one rollout worker, against the pipeline that samples each batch to its end, and where they meet the
trainer's other features (the invariants of test_combinations, with batches that span landings)."""

import pytest
from inprocess import assert_same_rows, quick_config, resumed, train
from test_combinations import FACTORS, case_id, overrides

from lrm_fast.training.step_metrics import PARTIAL_KEYS, step_metric_keys

pytestmark = pytest.mark.slow  # several in-process runs


def _without(rows: list[dict], keys) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in keys} for row in rows]


def _steps(rows: list[dict]) -> list[dict]:
    return [row for row in rows if "optim/skipped" in row]


def test_landings_no_closer_than_the_longest_response_sample_each_batch_whole(cold_start_cache, tmp_path):
    """partial_steps = max_new_tokens: every batch ends before the next lands, so the pool samples exactly
    what a worker that samples each batch to its end does."""
    settings = {"trainer.max_staleness": 1, "trainer.steps": 3}
    whole = train(quick_config(cold_start_cache, settings), tmp_path / "whole")
    partial = train(quick_config(cold_start_cache, {**settings, "rollout.partial_steps": 32}), tmp_path / "p")
    assert [row["async/fresher_tokens"] for row in _steps(partial.rows)] == [0.0, 0.0, 0.0]
    assert [row["async/token_staleness"] for row in _steps(partial.rows)] == [0.0, 1.0, 1.0]
    assert_same_rows(_without(partial.rows, PARTIAL_KEYS), whole.rows)


def _case(**levels) -> dict:
    """A combination case: the first level of every factor, but those given."""
    return {name: values[0] for name, values in FACTORS.items()} | levels


# Partial rollouts need static sampling and, to span landings, lag >= 2 with one worker (validation); each
# case stacks several features on the trainer's side, which takes the pool's batches as any other.
CASES = [
    _case(regime="negative", aggregation="seq_mean_token_sum_norm", steps_per_batch=(1, 2), lag=2,
          fused_head=True, packing=True),
    _case(regime="weighted", reward="kl", injection="osi", steps_per_batch=(2, 1), lag=2, estimator="rloo",
          objective="cispo", correction="token_mask"),
    _case(regime="neg_to_pos", reward="rlr", injection="luffy", lag=2, truncated="mask",
          estimator="reinforce_pp", objective="gspo", aggregation="micro_batch_token_sum"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_partial_rollouts_meet_the_trainers_features(case, cold_start_cache, tmp_path):
    """Landings every ceil(32 / lag) decode steps: a batch's late tokens come from the next batches'
    weights. Every step within the bound, counted apart from the trainer's bookkeeping; the checkpoint of
    step 2 holds the pools, so the resumed run logs the same."""
    lag = case["lag"]
    settings = overrides(case) | {
        "rollout.partial_steps": -(-32 // lag),  # lag landings before a batch's step (one worker)
        "trainer.steps": 3 + lag,
        "trainer.checkpoint_every": 2,
    }
    cfg = quick_config(cold_start_cache, settings)
    run = train(cfg, tmp_path / "run")
    always, measured = step_metric_keys(cfg, asynchronous=True)
    steps = _steps(run.rows)
    assert [row["step"] for row in steps] == list(range(1, cfg.trainer.steps + 1))
    for row in steps:
        assert row["optim/skipped"] == 0.0, row
        assert always <= set(row) - {"step"} <= always | measured
        n = row["step"]
        assert row["async/staleness"] == run.trained_at[n] - run.requested_at[n] <= cfg.trainer.max_staleness
        assert row["async/token_staleness"] <= row["async/staleness"]
    spanning = [row for row in steps if row["async/fresher_tokens"] > 0]
    assert spanning, "no batch went on with newer weights"
    assert all(row["async/token_staleness"] < row["async/staleness"] for row in spanning)
    continued = resumed(tmp_path / "run", 2, tmp_path / "continued", cfg)
    assert_same_rows(continued.rows, run.rows)  # its metrics file holds steps 1-2 from the copy


def test_checkpoints_change_nothing_that_is_sampled(cold_start_cache, tmp_path):
    """A checkpoint at every step saves the pools between landings: the run is the one that saves none until
    its end."""
    settings = {"trainer.max_staleness": 2, "trainer.steps": 4, "rollout.partial_steps": 16}
    every = train(quick_config(cold_start_cache, settings), tmp_path / "every")
    last = train(
        quick_config(cold_start_cache, {**settings, "trainer.checkpoint_every": 4}), tmp_path / "last"
    )
    assert any(row["async/fresher_tokens"] > 0 for row in _steps(every.rows))
    assert_same_rows(every.rows, last.rows)
