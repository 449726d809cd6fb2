"""Turning vLLM's outputs into Rollouts, on objects shaped like vLLM's RequestOutput (no engine needed)."""

import math
from types import SimpleNamespace

import pytest

from lrm_fast.rollout import NonFiniteError, Rollout
from lrm_fast.rollout.vllm import rollouts_of


def request_output(token_ids, logprobs, finish_reason="stop"):
    """A RequestOutput with one completion whose step t maps the sampled token to its Logprob."""
    steps = [
        {token: SimpleNamespace(logprob=lp, rank=1)} for token, lp in zip(token_ids, logprobs, strict=True)
    ]
    completion = SimpleNamespace(token_ids=token_ids, logprobs=steps, finish_reason=finish_reason)
    return SimpleNamespace(outputs=[completion])


def test_each_output_becomes_a_rollout_of_its_row():
    rows = [[5, 6], [7]]
    outputs = [
        request_output([8, 1], [-0.5, -1.25]),
        request_output([9, 9, 9], [-2.0, 0.0, -0.125], "length"),
    ]
    assert rollouts_of(rows, outputs) == [
        Rollout([5, 6], [8, 1], [-0.5, -1.25], finished=True),
        Rollout([7], [9, 9, 9], [-2.0, 0.0, -0.125], finished=False),
    ]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_a_non_finite_sampled_logprob_raises(bad):
    # One bad step in the second response is enough: NaN would pass for an injected token downstream.
    outputs = [request_output([8, 1], [-0.5, -1.25]), request_output([9, 9, 1], [-2.0, bad, -0.125])]
    with pytest.raises(NonFiniteError, match="non-finite sampled-token log-probs"):
        rollouts_of([[5, 6], [7]], outputs)
