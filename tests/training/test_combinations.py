"""Features where they meet: every pair of choices over the trainer's features, in a pairwise covering array
(tests/pairwise.py), each case a few steps of the tiny model (the last one training a batch sampled after a
weight push), checked by invariants that a wrong combination cannot pass:

- every logged value is finite, and no step is skipped;
- each step logs exactly the keys step_metric_keys lists for its settings;
- a run resumed from its step-1 checkpoint logs what the uninterrupted run logged;
- with asynchronous rollouts, the optimizer steps between a batch's request and the start of its update,
  counted by a hook on the optimizer's steps, are at most trainer.max_staleness and are what
  async/staleness says.

Levels: `lag` is rollout batches of asynchronous sampling ahead (trainer.max_staleness = lag x the
optimizer steps of a batch, mini_batches x epochs); `truncated=mask` needs the repetition reward, which it
then turns on whatever the reward level.
"""

import math

import pytest
from inprocess import assert_same_rows, quick_config, resumed, train
from pairwise import covering_array

from lrm_fast.training.step_metrics import ASYNC_KEYS, SKIPPED_STEP_KEYS, step_metric_keys

FACTORS = {
    "regime": ["full", "positive", "negative", "weighted", "neg_to_pos"],
    "reward": ["binary", "rlr", "repetition", "overlong", "kl"],
    "injection": ["none", "osi", "luffy"],
    "sampling": ["static", "dynamic"],
    "aggregation": [
        "token_mean",
        "seq_mean_token_mean",
        "seq_mean_token_sum_norm",
        "token_sum",
        "micro_batch_token_mean",
        "micro_batch_token_sum",
    ],
    "steps_per_batch": [(1, 1), (2, 1), (1, 2)],  # (mini_batches, epochs)
    "lag": [0, 1, 2],
    "fused_head": [False, True],
    "packing": [False, True],
    "truncated": ["keep", "mask", "filter"],
    "estimator": ["grpo", "rloo", "reinforce_pp"],
    "objective": ["clipped", "cispo", "gspo"],  # gspo: the clipped loss with ratio_level=sequence
    "correction": ["off", "token_mask", "sequence_truncate"],
}
CASES = covering_array(FACTORS, seed=0)

pytestmark = pytest.mark.slow  # 38 cases, 2-20 s each


def overrides(case: dict) -> dict:
    mini_batches, epochs = case["steps_per_batch"]
    settings = {
        "regime.name": case["regime"],
        "regime.positive_weight": 0.1,
        "regime.switch_step": 1,  # neg_to_pos: negative-only at step 1, full at step 2
        "sampling.name": case["sampling"],
        "sampling.max_rounds": 2,
        "loss.aggregation": case["aggregation"],
        "loss.fused_head": case["fused_head"],
        "loss.packing": case["packing"],
        "loss.micro_batch_tokens": 96,  # several micro-batches per step
        "trainer.mini_batches": mini_batches,
        "trainer.epochs": epochs,
        "trainer.max_staleness": case["lag"] * mini_batches * epochs,
        # Batch n is sampled with the weights after step n - 1 - lag: the last step trains a batch sampled
        # after a weight push (and scored with them: the KL in the reward, OSI, RLR on the rollout side).
        "trainer.steps": 2 + case["lag"],
        "reward.truncated": case["truncated"],
        "loss.advantage_estimator": case["estimator"],
        "loss.advantage_scale": "std" if case["estimator"] == "grpo" else "none",
        "loss.objective": "clipped" if case["objective"] == "gspo" else case["objective"],
        "loss.ratio_level": "sequence" if case["objective"] == "gspo" else "token",
    }
    if case["correction"] != "off":  # the sampler is the policy: the wiring is what is checked here
        level, mode = case["correction"].split("_")
        settings |= {
            "rollout.tis_cap": 2.0,
            "rollout.correction_level": level,
            "rollout.correction_mode": mode,
        }
        settings |= {"rollout.correction_low": 0.5} if mode == "mask" else {}
    reward = case["reward"]
    settings["reward.name"] = "rlr" if reward == "rlr" else "binary"
    settings["reward.b"] = 10.0  # responses of tens of tokens
    if reward == "repetition" or case["truncated"] == "mask":
        settings |= {"reward.repetition_penalty": -2.0, "reward.repetition_ngram": 2}
    if reward == "overlong":
        settings["reward.overlong_buffer"] = 16
    if reward == "kl":
        settings["reward.kl_coef"] = 0.05
    if case["injection"] != "none":
        settings["injection.name"] = "osi"
    if case["injection"] == "luffy":
        settings |= {"injection.shaping": True, "injection.clip_policy_tokens": False}
    return settings


def case_id(case: dict) -> str:
    mini_batches, epochs = case["steps_per_batch"]
    flags = [name for name in ("fused_head", "packing") if case[name]]
    parts = [case["regime"], case["reward"], case["injection"], case["sampling"], case["aggregation"]]
    parts += [f"mb{mini_batches}x{epochs}", f"lag{case['lag']}", *flags, f"trunc-{case['truncated']}"]
    parts += [case["estimator"], case["objective"], f"corr-{case['correction']}"]
    return "-".join(parts)


def test_the_cases_cover_every_pair():
    for a in FACTORS:
        for b in FACTORS:
            if a < b:
                seen = {(repr(case[a]), repr(case[b])) for case in CASES}
                assert len(seen) == len(FACTORS[a]) * len(FACTORS[b]), (a, b)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_combination(case, cold_start_cache, tmp_path):
    cfg = quick_config(cold_start_cache, overrides(case))
    run = train(cfg, tmp_path / "run")
    asynchronous = case["lag"] > 0
    always, measured = step_metric_keys(cfg, asynchronous)
    steps = [row for row in run.rows if "optim/skipped" in row]
    assert [row["step"] for row in steps] == list(range(1, cfg.trainer.steps + 1))
    for row in run.rows:
        assert all(math.isfinite(v) for k, v in row.items() if k != "step"), row
    for row in steps:
        assert row["optim/skipped"] == 0.0, row
        keys = set(row) - {"step"}
        assert always <= keys <= always | measured, (always - keys, keys - always - measured)
        assert not keys & set(SKIPPED_STEP_KEYS) - always
    if asynchronous:
        for row in steps:
            n = row["step"]
            staleness = run.trained_at[n] - run.requested_at[n]
            assert staleness <= cfg.trainer.max_staleness
            assert row["async/staleness"] == staleness
    else:
        assert not any(key in row for row in steps for key in ASYNC_KEYS)
    again = resumed(tmp_path / "run", 1, tmp_path / "resumed", cfg)
    assert_same_rows(again.rows, run.rows)
