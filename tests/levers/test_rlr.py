"""Relative length reward (PAPER.md §4) on hand-made groups."""

import pytest

from lrm_fast.levers.rewards import binary_rewards, relative_length_rewards

STUDY = {"tau": 0.75, "b": 500.0, "lo": -0.5, "hi": 1.0}


def test_rlr_shapes_correct_responses_of_easy_groups_by_relative_length():
    # 4 correct of 4, lengths 100, 200, 300, 400: mean 250.
    shaped = relative_length_rewards([True] * 4, [100, 200, 300, 400], 4, **STUDY)
    assert shaped.rewards == pytest.approx([1.3, 1.1, 0.9, 0.7])
    assert shaped.shaped_groups == 1


def test_rlr_mean_length_is_over_correct_responses_only():
    # 3 of 4 correct (p = 0.75 = tau): mean over 100, 200, 450 = 250; the wrong one keeps 0.
    shaped = relative_length_rewards([True, True, False, True], [100, 200, 5000, 450], 4, **STUDY)
    assert shaped.rewards == pytest.approx([1.3, 1.1, 0.0, 0.6])


def test_rlr_tau_boundary():
    lengths = [100, 300, 50, 50]
    at_tau = relative_length_rewards([True, True, True, False], lengths, 4, **STUDY)
    below_tau = relative_length_rewards([True, True, False, False], lengths, 4, **STUDY)
    assert at_tau.shaped_groups == 1 and at_tau.rewards[0] != 1.0  # p = 0.75 >= tau: shaped
    assert below_tau.shaped_groups == 0
    assert below_tau.rewards == [1.0, 1.0, 0.0, 0.0]  # p = 0.5 < tau: plain binary rewards


def test_rlr_clips_at_lo_and_hi():
    # mean of 0 and 2000 = 1000: (1000 - 0) / 500 = 2 -> hi 1; (1000 - 2000) / 500 = -2 -> lo -0.5.
    shaped = relative_length_rewards([True, True], [0, 2000], 2, **STUDY)
    assert shaped.rewards == [2.0, 0.5]
    custom = relative_length_rewards([True, True], [0, 2000], 2, tau=0.5, b=1000.0, lo=-0.2, hi=0.5)
    assert custom.rewards == [1.5, 0.8]


def test_rlr_groups_are_independent_and_all_wrong_groups_untouched():
    correct = [True, True, False, False, True, True]
    shaped = relative_length_rewards(correct, [10, 30, 5, 5, 40, 40], 2, **STUDY)
    assert shaped.rewards == pytest.approx([1.02, 0.98, 0.0, 0.0, 1.0, 1.0])
    assert shaped.shaped_groups == 2  # the equal-length group is shaped, to no effect


def test_rlr_validates_shapes():
    with pytest.raises(ValueError, match="whole groups"):
        relative_length_rewards([True] * 3, [1, 2, 3], 2, **STUDY)
    assert binary_rewards([True, False]) == [1.0, 0.0]
