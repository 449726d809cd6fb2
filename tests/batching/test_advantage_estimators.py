"""loss.advantage_estimator: RLOO's leave-one-out baseline and REINFORCE++'s batch std against float64 hand
formulas, REINFORCE++ over 2 ranks (gloo) against one process, and what the config refuses."""

import json
import os
import socket
import statistics
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lrm_fast.batching import samples as B
from lrm_fast.config import TrainConfig
from lrm_fast.config.choices import AdvantageEstimator, AdvantageScale
from lrm_fast.config.validation import validate
from lrm_fast.levers.scoring import kl_in_reward

REWARDS = [1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0.5, 0, 1, 0.25]  # 4 groups of 4, one all-correct


def _samples(rewards=REWARDS) -> list[B.Sample]:
    return [B.Sample([1], [2] * (1 + i % 5), float(r), r == 1) for i, r in enumerate(rewards)]


def _centred(rewards, group_size=4) -> list[float]:
    out = []
    for g in range(0, len(rewards), group_size):
        group = rewards[g : g + group_size]
        out += [r - sum(group) / len(group) for r in group]
    return out


def test_rloo_is_each_response_against_the_mean_of_the_others():
    samples = _samples()
    B.assign_advantages(samples, 4, "none", estimator="rloo")
    for g in range(0, len(REWARDS), 4):
        group = REWARDS[g : g + 4]
        for i, s in enumerate(samples[g : g + 4]):
            others = group[:i] + group[i + 1 :]
            assert s.advantage == pytest.approx(group[i] - sum(others) / 3, abs=1e-6)
            assert s.zero_variance == (len(set(group)) == 1)
    # G / (G - 1) times GRPO's centring, as the leave-one-out algebra says.
    centred = _centred(REWARDS)
    assert [s.advantage for s in samples] == pytest.approx([4 / 3 * c for c in centred], abs=1e-6)


def test_reinforce_pp_divides_the_centred_rewards_by_the_batch_std_of_responses():
    samples = _samples()
    B.assign_advantages(samples, 4, "none", estimator="reinforce_pp")
    metrics = B.batch_advantage_scale(samples, "reinforce_pp")
    centred = _centred(REWARDS)
    std = statistics.stdev(centred)  # unbiased, over responses (the zero-variance group's zeros included)
    assert metrics == {"advantage/batch_std": pytest.approx(std, rel=1e-6)}
    assert [s.advantage for s in samples] == pytest.approx([c / (std + 1e-6) for c in centred], rel=1e-5)
    assert all(s.advantage == 0.0 for s in samples[4:8])  # the all-correct group keeps exactly 0
    assert B.batch_advantage_scale(samples, "grpo") == {} and B.batch_advantage_scale(samples, "rloo") == {}


def test_reinforce_pp_leaves_filtered_responses_out_of_the_std_taken_about_zero():
    samples = _samples()
    B.assign_advantages(samples, 4, "none", estimator="reinforce_pp")
    samples[0].filtered = True  # DAPO's overlong filtering took it out of the loss
    kept = _centred(REWARDS)[1:]
    std = B.scale_by_batch_std(samples)
    assert std == pytest.approx((sum(a * a for a in kept) / (len(kept) - 1)) ** 0.5, rel=1e-6)


def test_reinforce_pp_does_not_blow_up_when_filtering_leaves_equal_advantages():
    # Every wrong answer filtered: the kept ones all have +0.5, whose spread about their own mean is 0.
    samples = _samples([1, 1, 0, 0, 1, 1, 0, 0])
    B.assign_advantages(samples, 4, "none", estimator="reinforce_pp")
    for s in samples:
        s.filtered = s.reward == 0
    std = B.scale_by_batch_std(samples)
    assert std == pytest.approx((4 * 0.25 / 3) ** 0.5)
    assert [s.advantage for s in samples if not s.filtered] == pytest.approx([0.5 / std] * 4, rel=1e-5)
    lone = _samples([1, 0])
    B.assign_advantages(lone, 2, "none", estimator="reinforce_pp")
    lone[1].filtered = True
    assert B.scale_by_batch_std(lone) == 0.0 and lone[0].advantage == 0.5  # one response: left as it is


def test_kl_in_reward_recomputes_with_the_runs_estimator():
    samples = _samples()
    B.assign_advantages(samples, 4, "none", estimator="rloo")
    log_ratios = [0.1 * i for i in range(len(samples))]
    kl_in_reward(samples, log_ratios, 0.5, 4, "none", "rloo")
    rewards = [r - 0.5 * lr for r, lr in zip(REWARDS, log_ratios, strict=True)]
    assert [s.advantage for s in samples] == pytest.approx([4 / 3 * c for c in _centred(rewards)], abs=1e-6)


@pytest.mark.parametrize("estimator", ["rloo", "reinforce_pp"])
def test_a_group_std_with_rloo_or_reinforce_pp_is_refused(estimator):
    cfg = TrainConfig()
    cfg.loss.advantage_estimator = AdvantageEstimator(estimator)
    with pytest.raises(ValueError, match=f"advantage_estimator={estimator} takes loss.advantage_scale=none"):
        validate(cfg)
    cfg.loss.advantage_scale = AdvantageScale.none
    validate(cfg)
    cfg.loss.advantage_estimator, cfg.loss.advantage_scale = estimator, "std"  # as a config built in code
    with pytest.raises(ValueError, match=f"advantage_estimator={estimator} takes loss.advantage_scale=none"):
        validate(cfg)


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    samples = _samples()[8 * rank : 8 * rank + 8]  # each rank its own two groups
    B.assign_advantages(samples, 4, "none", estimator="reinforce_pp")
    std = B.scale_by_batch_std(samples)
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"std": std, "advantages": [s.advantage for s in samples]}, f)
    torch.distributed.destroy_process_group()


@pytest.mark.timeout(120)
def test_reinforce_pp_std_spans_the_ranks(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank")
    mp.start_processes(_worker, args=(port, out), nprocs=2, join=True, start_method="spawn")
    ranks = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(2)]
    single = _samples()
    B.assign_advantages(single, 4, "none", estimator="reinforce_pp")
    std = B.scale_by_batch_std(single)
    assert ranks[0]["std"] == ranks[1]["std"] == pytest.approx(std, rel=1e-12)
    got = ranks[0]["advantages"] + ranks[1]["advantages"]
    assert got == pytest.approx([s.advantage for s in single], rel=1e-12)
