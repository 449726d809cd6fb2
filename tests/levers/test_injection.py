"""Offline sample injection (PAPER.md §5): which responses are replaced, with what, and the new scores."""

import json

import pytest
import torch
from trainer_fixtures import synthetic_samples, tiny_model

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import InjectionConfig, LossConfig, RewardConfig
from lrm_fast.data.examples import PromptExample
from lrm_fast.data.tokenizer import build_tokenizer
from lrm_fast.levers.injection import SolutionBank, load_solution_bank, plan_injections
from lrm_fast.levers.scoring import score_rollouts
from lrm_fast.rollout import Rollout
from lrm_fast.training.update import micro_batch_loss, response_logits


def test_injection_plan_replaces_first_incorrect_of_too_hard_groups():
    G = 4
    correct = [False] * 4 + [True, False, False, False] + [True, True, False, False]
    # alpha 0.25: groups 0 (p = 0) and 1 (p = 0.25) qualify, group 2 (p = 0.5) does not.
    plan = plan_injections(correct, G, alpha=0.25, cap=2, available=[5, 5, 5])
    assert plan == [(0, 0), (1, 1), (5, 0), (6, 1)]


def test_injection_k_is_min_of_cap_incorrect_and_available():
    correct = [False] * 4 + [False] * 4 + [True, False, False, False]
    plan = plan_injections(correct, 4, alpha=0.25, cap=3, available=[1, 0, 9])
    assert plan == [(0, 0), (9, 0), (10, 1), (11, 2)]  # 1 available; none; 3 incorrect left of cap 3


def test_injection_alpha_boundary():
    correct = [True, False, False, False, False, False, False, False]  # p = 1/8 = alpha
    assert plan_injections(correct, 8, alpha=0.125, cap=1, available=[1]) == [(1, 0)]
    assert plan_injections(correct, 8, alpha=0.1, cap=1, available=[1]) == []


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def rollout(tokenizer, prompt_ids, text):
    ids = tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return Rollout(prompt_ids, ids, [0.0] * len(ids), finished=True)


def test_injection_recomputes_rewards_and_advantages(tokenizer):
    good = "<think>2+3=5</think>\\boxed{5}"
    example = PromptExample(id="p", problem="2+3", answer="5", solutions=(good, "<think>x</think>\\boxed{6}"))
    prompt = tokenizer("2+3")["input_ids"]
    rollouts = [rollout(tokenizer, prompt, "<think>2+3=6</think>\\boxed{6}")] * 4
    bank = SolutionBank(tokenizer, max_new_tokens=64, solutions_by_id=None)
    cfg = InjectionConfig(name="osi", alpha=0.125, cap=2)
    scored = score_rollouts([example], rollouts, 4, tokenizer, RewardConfig(), cfg, bank, "std")
    samples = scored.samples
    assert scored.injected == 2 and [s.injected for s in samples] == [True, True, False, False]
    assert samples[0].response_ids == bank.solutions(example)[0]
    # The second stored "solution" is wrong: graded like any response, it gets no reward.
    assert [s.correct for s in samples] == [True, False, False, False]
    assert [s.reward for s in samples] == [1.0, 0.0, 0.0, 0.0]
    assert samples[0].advantage == pytest.approx(1.5, rel=1e-5)  # (1 - 0.25) / std(1,0,0,0) = 0.75 / 0.5
    assert samples[1].advantage == pytest.approx(-0.5, rel=1e-5)
    assert (scored.before.all_wrong, scored.after.all_wrong) == (1, 0)


def test_injection_skips_solutions_longer_than_the_response_limit(tokenizer):
    short, long = "<think>1+1=2</think>\\boxed{2}", "<think>" + "1+1=2," * 20 + "</think>\\boxed{2}"
    example = PromptExample(id="p", problem="1+1", answer="2", solutions=(long, short))
    bank = SolutionBank(tokenizer, max_new_tokens=40, solutions_by_id=None)
    solutions = bank.solutions(example)
    assert len(solutions) == 1
    assert solutions[0][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(solutions[0], skip_special_tokens=True) == short


def test_injection_bank_from_jsonl_keyed_by_id(tmp_path, tokenizer):
    path = tmp_path / "bank.jsonl"
    path.write_text(json.dumps({"id": "p", "solutions": ["<think>1+1=2</think>\\boxed{2}"]}) + "\n")
    by_id = load_solution_bank(path)
    bank = SolutionBank(tokenizer, 64, by_id)
    assert len(bank.solutions(PromptExample(id="p", problem="1+1", answer="2"))) == 1
    assert bank.solutions(PromptExample(id="other", problem="1+1", answer="2")) == []
    path.write_text('{"id": "p", "solutions": ["a"]}\n{"id": "q", "solutions": 3}\n')
    with pytest.raises(ValueError, match=r"bank.jsonl, line 2"):
        load_solution_bank(path)


def test_injection_shaping_loss_is_luffy_term_on_injected_tokens(one_thread):
    model, gamma = tiny_model(), 0.1
    samples = synthetic_samples(2, 4, seed=4)
    B.assign_advantages(samples, 4, "std")
    samples[0].injected = samples[5].injected = True
    B.assign_weights(samples, "token_mean", B.local_normalisers(samples), sum_norm_length=10)
    batch = M.collate(samples, False)
    loss, _ = micro_batch_loss(model, None, batch, LossConfig(backend="torch"), 1.0, shaping_gamma=gamma)
    # Plain torch: on-policy clipped loss -A (ratio 1) elsewhere, -A p / (p + gamma) on injected tokens.
    logp = torch.log_softmax(response_logits(model, batch).float(), -1)
    logp = logp.gather(1, batch.targets[:, None]).squeeze(1)
    p = logp.exp()
    ratio = torch.exp(logp - logp.detach())
    token_loss = torch.where(batch.injected, -batch.advantages * p / (p + gamma), -batch.advantages * ratio)
    expected = (batch.weights * token_loss).sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()), allow_unused=True)
    for g, e in zip(grads, expected_grads, strict=True):
        if e is not None:
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)
    unshaped, _ = micro_batch_loss(model, None, batch, LossConfig(backend="torch"), 1.0)
    assert not torch.isclose(unshaped, loss)
