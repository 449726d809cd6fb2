"""benchmarks/decode_length.py on CPU: its replay is the loop's computation over the loop's active rows, its
forced-length draw gives the planned lengths, and the whole script runs on a random tiny_long-shaped model."""

import math

import pytest
import torch

from benchmarks.decode_length import forced_lengths_draw, main, replay, short_lengths
from lrm_fast.config import TinyModelConfig
from lrm_fast.data.tokenizer import build_tokenizer
from lrm_fast.model.causal_lm import build_model, tiny_qwen2_config
from lrm_fast.rollout import SamplingParams
from lrm_fast.rollout.hf import HFRolloutBackend

pytestmark = pytest.mark.usefixtures("one_thread")

# conf/model/tiny_long.yaml's shape, randomly initialised (no cold start is trained here).
TINY_LONG = TinyModelConfig(
    hidden_size=128, num_layers=3, num_heads=4, intermediate_size=512, max_position_embeddings=2048
)
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14]]  # unequal: left padding matters


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A saved random model of the long task's shape with the project's tokenizer, as --model reads."""
    tokenizer = build_tokenizer()
    config = tiny_qwen2_config(
        len(tokenizer), TINY_LONG, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    path = tmp_path_factory.mktemp("tiny_long")
    build_model(config, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model():
    config = tiny_qwen2_config(64, TINY_LONG, pad_token_id=0, eos_token_id=1)
    config.initializer_range = 0.2  # far from uniform, so that a wrong replay shows in the log-probs
    return build_model(config, seed=0).eval()


def test_replay_runs_the_loops_forwards_over_its_active_rows(model):
    # A sixth of the vocabulary stops a response, so rows leave the batch at many different steps.
    stop_ids = list(range(1, 12))
    backend = HFRolloutBackend(model, build_tokenizer(), eos_token_ids=stop_ids)
    rollouts = backend.generate(PROMPTS, 4, SamplingParams(max_new_tokens=24, temperature=1.0, seed=0))
    lengths = [len(r.response_ids) for r in rollouts]
    assert len(set(lengths)) >= 3 and min(lengths) < 24  # rows do leave, at several steps
    replayed = replay(backend, rollouts, temperature=1.0)
    wrong_temperature = replay(backend, rollouts, temperature=0.5)
    # Decode step t (t = 0, 1, ...) feeds token t of every row longer than t + 1.
    assert replayed.active_rows == [sum(n > t + 1 for n in lengths) for t in range(max(lengths) - 1)]
    assert replayed.max_logprob_error < 1e-5  # the same logits as the loop's, token for token
    assert wrong_temperature.max_logprob_error > 1e-3  # the check can fail
    assert replayed.forward_s > 0


def test_forced_lengths_draw_ends_each_row_at_its_planned_length(model):
    backend = HFRolloutBackend(model, build_tokenizer(), eos_token_ids=[1])
    plan = [24, 3, 1, 7, 3, 24]
    draw = forced_lengths_draw(plan, eos_id=1, filler_id=5, device=torch.device("cpu"))
    rollouts = backend._decode([PROMPTS[1]], len(plan), 24, draw, seed=None)
    assert [len(r.response_ids) for r in rollouts] == plan
    assert [r.response_ids[-1] for r in rollouts] == [1] * len(plan)  # the last token of each is EOS
    assert all(set(r.response_ids[:-1]) <= {5} for r in rollouts)
    with pytest.raises(RuntimeError, match="rows"):  # a batch other than the plan's is refused
        forced_lengths_draw(plan, 1, 5, torch.device("cpu"))(torch.zeros(2, 64))


def test_short_lengths_spread_up_to_the_longest():
    lengths = short_lengths(31, 72)
    assert len(lengths) == 31 and lengths == sorted(lengths)
    assert (lengths[0], lengths[-1]) == (2, 72)
    assert short_lengths(3, 1) == [1, 1, 1]


def test_main_reports_both_ratios_on_a_saved_model(model_dir):
    sizes = "--prompts 2 --group-size 2 --max-new-tokens 24 --short-rows 3 --repeats 1 --temperature 1.0"
    result = main(["--model", str(model_dir), "--device", "cpu", *sizes.split()])
    loop, mixed = result["loop"], result["one_long_among_short"]
    assert (result["device"], result["threads"], loop["rows"]) == ("cpu", 1, 4)  # trainer.num_threads: 1
    assert loop["replay_max_logprob_error"] < 1e-5
    assert loop["decode_steps"] == loop["length_max"] - 1
    assert 1 <= loop["length_min"] <= loop["length_max"] <= 24
    assert loop["bound_s"] > 0 and math.isfinite(loop["bound_over_loop"]) and loop["bound_over_loop"] > 0
    assert mixed["lengths_as_planned"] and (mixed["short_rows"], mixed["short_length_max"]) == (3, 3)
    assert math.isfinite(mixed["mixed_over_separate"]) and mixed["mixed_over_separate"] > 0
    assert mixed["no_drop_s"] > 0 and math.isfinite(mixed["no_drop_over_separate"])
