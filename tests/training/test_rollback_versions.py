"""The divergence guard under asynchronous rollouts, end to end: an update whose weights make every logit
overflow is found by the batch sampled with them, lag rollout batches later, and undone; the run goes on
from the weights before it instead of stopping.

The update of step 2 is poisoned (the final norm's weight set to 1e38: finite parameters, infinite logits).
Batch n is sampled with the weights after step n - 1 - lag, so batch 3 + lag is the first one sampled with
them; meanwhile the updates on batches sampled earlier run on the poisoned weights and are skipped (their
loss is not finite). Rolling back the last update at that point would restore the poisoned weights, which
would then sample every batch again until the run stopped.
"""

import pytest
import torch
from inprocess import quick_config, train

from lrm_fast.training.trainer import GRPOTrainer

POISONED_STEP = 2

pytestmark = pytest.mark.slow  # runs of 6-8 steps


def _parameters(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


@pytest.mark.parametrize("lag", [0, 1, 2])
def test_a_poisoned_update_is_undone_when_its_weights_sample(lag, cold_start_cache, tmp_path):
    detected_at = 3 + lag  # the step that trains the first batch sampled with the poisoned weights
    cfg = quick_config(
        cold_start_cache,
        {
            "trainer.steps": detected_at + 3,
            "trainer.max_staleness": lag,
            "trainer.max_bad_steps": 5,
            "trainer.checkpoint_every": 100,
            "regime.drop_zero_variance": False,  # every step has gradient (the entropy term)
        },
    )
    after_update, at_rollback, lines = {}, {}, []

    def setup(trainer: GRPOTrainer):
        update, roll_back, write = trainer._guarded_update, trainer._roll_back, trainer.logger.write

        def poisoning_update(samples):
            result = update(samples)
            after_update[trainer.step_count] = _parameters(trainer.model)
            if trainer.step_count == POISONED_STEP:
                with torch.no_grad():
                    trainer.model.model.norm.weight.fill_(1e38)
            return result

        def noted_roll_back(quantity, sampled_with):
            lr = roll_back(quantity, sampled_with)
            at_rollback[trainer.step_count] = _parameters(trainer.model)
            return lr

        trainer._guarded_update, trainer._roll_back = poisoning_update, noted_roll_back
        trainer.logger.write = lambda line: (lines.append(line), write(line))

    run = train(cfg, tmp_path / "run", setup)
    rows = {row["step"]: row for row in run.rows if "optim/skipped" in row}
    undone = f"step {detected_at}: non-finite sampled logits at lr"
    assert any(line.startswith(undone) and "the update of step 2 rolled back" in line for line in lines)
    # The weights after the rollback are those step 1's update left, exactly.
    assert torch.equal(at_rollback[detected_at], after_update[POISONED_STEP - 1])
    # Every step before the detection trained on poisoned weights (after step 2) or sampled with them.
    assert [rows[n]["optim/skipped"] for n in range(POISONED_STEP + 1, detected_at + 1)] == [1.0] * (lag + 1)
    # Then the run trains again, from the restored weights, to its end.
    later = [rows[n] for n in range(detected_at + 1, cfg.trainer.steps + 1)]
    assert all(row["optim/skipped"] == 0.0 and row["optim/grad_norm"] > 0 for row in later)
    assert run.summary["steps"] == cfg.trainer.steps
