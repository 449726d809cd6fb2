"""A rollout worker started apart (lrm-fast-rollout-worker) that joins a run by rank 0's address: it samples
what a worker rank 0 starts samples, the run stops it, and a run that loses it says so."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from processes import free_port, gone
from test_async_rollouts import perturb, small_policy_and_config, trainer_logprobs

from lrm_fast.batching import micro_batches as M
from lrm_fast.cli.rollout_worker import main as worker_main
from lrm_fast.data.sources import builtin_examples
from lrm_fast.runtime.worker_group import WorkerGroup, host_store
from lrm_fast.training.async_rollout import AsyncRollouts, Request

pytestmark = pytest.mark.usefixtures("one_thread")


def _command(port: int, *more: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lrm_fast.cli.rollout_worker", "--address", f"127.0.0.1:{port}", *more],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _batches(pipeline, model, examples) -> list:
    for index in (1, 2):
        pipeline.request(Request(index, 0, [examples], seed=index), model)
    torch.manual_seed(0)
    perturb(model)
    pipeline.request(Request(3, 1, [examples], seed=3), model)
    return [pipeline.take(i)[0] for i in (1, 2, 3)]


def test_a_worker_started_apart_samples_what_a_started_worker_does():
    """One worker rank 0 starts and one started apart share batches 1-3 (batch n on worker 1 + n mod 2): the
    batches equal those of one started worker, and the run's stop ends the command with status 0."""
    model, tokenizer, cfg = small_policy_and_config()
    examples = builtin_examples(2, "train", 0, cfg.data.difficulty)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    alone = AsyncRollouts(cfg, model, tokenizer, None)
    try:
        expected = _batches(alone, model, examples)
    finally:
        alone.close()
    model.load_state_dict(start)
    cfg.trainer.remote_rollout_workers, cfg.trainer.rollout_port = 1, free_port()
    command = _command(cfg.trainer.rollout_port)
    try:
        pipeline = AsyncRollouts(cfg, model, tokenizer, None)
        try:
            results = _batches(pipeline, model, examples)
        finally:
            pipeline.close()
        output, _ = command.communicate(timeout=60)
    finally:
        command.kill()
    assert command.returncode == 0, output
    assert [r.worker for r in results] == [2, 1, 2]  # the one started apart is group rank 2
    for one, other in zip(expected, results, strict=True):
        a, b = one.selection.samples, other.selection.samples
        assert [s.response_ids for s in a] == [s.response_ids for s in b]
        torch.testing.assert_close(M.sampler_logprobs(a), M.sampler_logprobs(b), rtol=0, atol=0)


def test_a_run_that_loses_a_worker_started_apart_stops_and_says_so():
    model, tokenizer, cfg = small_policy_and_config()
    examples = builtin_examples(2, "train", 0, cfg.data.difficulty)
    cfg.trainer.rollout_workers, cfg.trainer.remote_rollout_workers = 0, 1
    cfg.trainer.rollout_port = free_port()
    command = _command(cfg.trainer.rollout_port, "--index", "1")
    try:
        pipeline = AsyncRollouts(cfg, model, tokenizer, None)
        try:
            pipeline.request(Request(1, 0, [examples], seed=1), model)
            pipeline.take(1)
            os.kill(command.pid, signal.SIGKILL)
            assert gone(command.pid)
            lost = "rank 0 (stopped receiving from|lost the connection to) the rollout workers"
            with pytest.raises(RuntimeError, match=lost):
                pipeline.request(Request(2, 0, [examples], seed=2), model)
                pipeline.take(2)
        finally:
            pipeline.close()
    finally:
        command.kill()


def test_a_worker_index_rank_0_does_not_wait_for_is_refused():
    store, address = host_store(1, remote=2, port=free_port())
    for index in (0, 3):
        with pytest.raises(
            RuntimeError, match=rf"waits for 2 worker\(s\) started apart: there is no worker {index}"
        ):
            WorkerGroup.join_apart(address, index)
    del store


@pytest.mark.parametrize("address", ["29600", "host:", "host:port", "host:70000"])
def test_the_command_names_a_bad_address(address, capsys):
    with pytest.raises(SystemExit) as error:
        worker_main(["--address", address])
    assert error.value.code == 2
    assert "expected HOST:PORT (rank 0's host and trainer.rollout_port)" in capsys.readouterr().err


def _devices_run(devices: list[str]) -> list:
    model, tokenizer, cfg = small_policy_and_config()
    cfg.trainer.rollout_devices = devices
    examples = builtin_examples(2, "train", 0, cfg.data.difficulty)
    pipeline = AsyncRollouts(cfg, model, tokenizer, None)
    try:
        return _batches(pipeline, model, examples)
    finally:
        pipeline.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU twin of the GPU test below")
def test_a_worker_given_devices_on_a_host_without_cuda_stops_the_run_and_says_so():
    """trainer.rollout_devices: the worker sets its CUDA_VISIBLE_DEVICES; given GPUs that torch cannot see,
    it refuses to sample on the CPU behind the user's back, and rank 0 reports why."""
    with pytest.raises(RuntimeError, match=r"given the GPUs '0' .* torch sees no CUDA device there"):
        _devices_run(["0"])
    assert [r.device for r in _devices_run([])] == ["cpu"] * 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_worker_given_a_gpu_samples_on_it_with_the_trainers_weights():
    """On a GPU host: the hf worker's policy lives on its GPU; its log-probs of the pushed weights match the
    trainer's recomputation on the CPU to float tolerance."""
    model, tokenizer, cfg = small_policy_and_config()
    cfg.trainer.rollout_devices = ["0"]
    examples = builtin_examples(2, "train", 0, cfg.data.difficulty)
    pipeline = AsyncRollouts(cfg, model, tokenizer, None)
    try:
        pipeline.request(Request(1, 0, [examples], seed=1), model)
        result = pipeline.take(1)[0]
    finally:
        pipeline.close()
    assert result.device == "cuda:0"
    samples = result.selection.samples
    gap = M.sampler_logprobs(samples) - trainer_logprobs(model, samples, 0.8)
    assert gap.abs().max() < 1e-4
