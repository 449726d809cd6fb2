"""The divergence guard under asynchronous rollouts, end to end: an update whose weights make every logit
overflow is undone as soon as anything computed with those weights is non-finite, and the run goes on from
the weights before it, with the batches in flight sampled again from them.

The update of step 2 is poisoned (the final norm's weight set to 1e38: finite parameters, infinite logits).
Batch n is sampled with the weights after step n - 1 - lag. In the synchronous loop (lag 0) batch 3 is the
first sampled with the poisoned weights and overflows; with lag >= 1 batch 3 was sampled before step 2, and
the update on it, computed with the poisoned weights, has a non-finite loss, which points at the newest
update the batch's own weights lack. Either way step 3 undoes update 2. Rolling back only the last update
instead, or waiting for the first batch the poisoned weights sample (lag steps later, each update until then
a bad step), would keep the poison or stop the run.
"""

import pytest
import torch
from inprocess import quick_config, train

from lrm_fast.training.guard import Diverged
from lrm_fast.training.trainer import GRPOTrainer

POISONED_STEP = 2

pytestmark = pytest.mark.slow  # runs of 6-8 steps


def _parameters(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def _poisoning(after_update: dict, at_rollback: dict, lines: list):
    """A setup that poisons the update of POISONED_STEP and records the parameters after every update and
    at every rollback, and the lines the trainer logs."""

    def setup(trainer: GRPOTrainer):
        update, roll_back, write = trainer._guarded_update, trainer._roll_back, trainer.logger.write

        def poisoning_update(samples, version):
            result = update(samples, version)
            after_update[trainer.step_count] = _parameters(trainer.model)
            if trainer.step_count == POISONED_STEP:
                with torch.no_grad():
                    trainer.model.model.norm.weight.fill_(1e38)
            return result

        def noted_roll_back(quantity, sampled_with):
            try:
                return roll_back(quantity, sampled_with)
            finally:
                at_rollback[trainer.step_count] = _parameters(trainer.model)

        trainer._guarded_update, trainer._roll_back = poisoning_update, noted_roll_back
        trainer.logger.write = lambda line: (lines.append(line), write(line))

    return setup


def _settings(lag: int, **more) -> dict:
    return {
        "trainer.max_staleness": lag,
        "trainer.checkpoint_every": 100,
        "regime.drop_zero_variance": False,  # every step has gradient (the entropy term)
        **more,
    }


@pytest.mark.parametrize("lag", [0, 1, 2])
def test_a_poisoned_update_is_undone_at_the_next_step(lag, cold_start_cache, tmp_path):
    cfg = quick_config(cold_start_cache, _settings(lag, **{"trainer.steps": 6 + lag}))
    after_update, at_rollback, lines = {}, {}, []
    run = train(cfg, tmp_path / "run", _poisoning(after_update, at_rollback, lines))
    rows = {row["step"]: row for row in run.rows if "optim/skipped" in row}
    quantity = "sampled logits" if lag == 0 else "loss"
    undone = f"step 3: non-finite {quantity} at lr"
    assert any(line.startswith(undone) and "the update of step 2 rolled back" in line for line in lines)
    # The weights after the rollback are those step 1's update left, exactly.
    assert torch.equal(at_rollback[3], after_update[POISONED_STEP - 1])
    # Step 3 is the only bad step (trainer.max_bad_steps is the default 3); then the run trains to its end.
    assert [n for n, row in rows.items() if row["optim/skipped"]] == [3]
    assert all(rows[n]["optim/grad_norm"] > 0 for n in rows if n != 3)
    assert run.summary["steps"] == cfg.trainer.steps
    if lag:  # the batches in flight were sampled again, from the restored weights
        staleness = [rows[n]["async/staleness"] for n in rows if n > 3]
        assert all(0 <= value <= lag for value in staleness)


def test_a_run_stopped_by_the_guard_keeps_batches_of_the_weights_it_kept(cold_start_cache, tmp_path):
    """trainer.max_bad_steps=1: step 3 undoes update 2 and stops the run. Its checkpoint holds the batches
    in flight, which must be sampled from the restored weights, so the resumed run trains them."""
    settings = _settings(2, **{"trainer.steps": 7, "trainer.max_bad_steps": 1})
    after_update, at_rollback, lines = {}, {}, []
    setup = _poisoning(after_update, at_rollback, lines)
    with pytest.raises(Diverged, match=r"step 3: non-finite loss .* the update of step 2 rolled back"):
        train(quick_config(cold_start_cache, settings), tmp_path / "run", setup)
    assert torch.equal(at_rollback[3], after_update[POISONED_STEP - 1])
    again = quick_config(cold_start_cache, {**settings, "trainer.max_bad_steps": 3})
    resumed = train(again, tmp_path / "run")
    rows = [row for row in resumed.rows if "optim/skipped" in row and row["step"] > 3]
    assert [row["step"] for row in rows] == [4, 5, 6, 7]
    assert all(row["optim/skipped"] == 0.0 and 0 <= row["async/staleness"] <= 2 for row in rows)
