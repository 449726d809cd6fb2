"""The asynchronous pipeline against the synchronous loop: the same requests sampled in another process at
lag 0 give the same run, and a checkpoint moves between the two modes only where that is exact.

Both modes weight tokens by the sampler correction here (rollout.tis_cap = inf), which asynchronous
rollouts always apply, so that the updates are the same computation.
"""

import math

import pytest
from inprocess import assert_same_rows, quick_config, resumed, train

from lrm_fast.training.async_rollout import AsyncRollouts
from lrm_fast.training.step_metrics import ASYNC_KEYS
from lrm_fast.training.trainer import GRPOTrainer

pytestmark = pytest.mark.slow  # several in-process runs each


def _lag_zero_pipeline(trainer: GRPOTrainer) -> None:
    """The rollout process at trainer.max_staleness = 0: batch n requested at step n, with W_{n-1}."""
    trainer.pipeline = AsyncRollouts(
        trainer.cfg, trainer.model, trainer.tokenizer, trainer.bank, trainer.ref_model
    )
    trainer.pipeline.requested = trainer.step_count


def _without(rows: list[dict], keys) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in keys} for row in rows]


VARIANTS = {
    "static": {},
    # Rounds reserved and not used go back to the sampler at different moments in the two modes.
    "dynamic": {"sampling.name": "dynamic", "sampling.max_rounds": 3},
    # The reward's KL: the trainer's reference against the rollout process's copy.
    "kl_in_reward_osi": {"reward.kl_coef": 0.05, "injection.name": "osi"},
}


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_the_pipeline_at_lag_zero_is_the_synchronous_loop(variant, cold_start_cache, tmp_path):
    cfg = quick_config(cold_start_cache, {"rollout.tis_cap": math.inf, "trainer.steps": 3, **variant})
    synchronous = train(cfg, tmp_path / "sync")
    pipelined = train(cfg, tmp_path / "pipelined", setup=_lag_zero_pipeline)
    assert all(row["async/staleness"] == 0.0 for row in pipelined.rows if "async/staleness" in row)
    assert_same_rows(_without(pipelined.rows, ASYNC_KEYS), synchronous.rows)
    assert pipelined.summary["final_heldout_accuracy"] == synchronous.summary["final_heldout_accuracy"]


def test_a_synchronous_checkpoint_continues_with_asynchronous_rollouts(cold_start_cache, tmp_path):
    """From the step-1 checkpoint of a synchronous run, max_staleness=1 samples batch 2 next, with the
    weights after step 1, as the synchronous loop does: step 2 is the same step."""
    settings = {"rollout.tis_cap": math.inf, "trainer.steps": 2}
    synchronous = train(quick_config(cold_start_cache, settings), tmp_path / "sync")
    asynchronous = quick_config(cold_start_cache, {**settings, "trainer.max_staleness": 1})
    continued = resumed(tmp_path / "sync", 1, tmp_path / "continued", asynchronous)
    assert_same_rows(_without(continued.rows, ASYNC_KEYS), synchronous.rows)
    assert [row["async/staleness"] for row in continued.rows if "async/staleness" in row] == [0.0]


def test_batches_sampled_ahead_are_not_dropped_by_a_synchronous_resume(cold_start_cache, tmp_path):
    settings = {"trainer.steps": 1, "trainer.max_staleness": 1}
    train(quick_config(cold_start_cache, settings), tmp_path / "async")
    synchronous = quick_config(cold_start_cache, {"trainer.steps": 2})
    with pytest.raises(
        ValueError, match=r"holds batches sampled ahead .* \(1\): .* trainer.max_staleness \(> 0\)"
    ):
        resumed(tmp_path / "async", 1, tmp_path / "sync", synchronous)
