"""SFT cold start: response-only loss, padding, schedule, learning, the atomic cache, the task it learns."""

import itertools
import json
import math
from dataclasses import asdict, replace

import pytest
import torch

import lrm_fast.model.cold_start as sft
from lrm_fast.config import ColdStartConfig, DifficultyConfig, LongDifficultyConfig, TinyModelConfig
from lrm_fast.data.arithmetic import generate_problems, make_problem
from lrm_fast.data.grader import grade
from lrm_fast.data.tokenizer import build_tokenizer, load_tokenizer
from lrm_fast.model.causal_lm import build_model, load_model, tiny_qwen2_config
from lrm_fast.model.cold_start import (
    IGNORE_INDEX,
    cached_cold_start,
    cold_start_key,
    collate,
    encode_example,
    response_loss,
    run_sft,
    teacher_problems,
)
from lrm_fast.model.optim import lr_multiplier

TASK = DifficultyConfig()
# The smallest shape the model code allows (head_dim 32), to keep these tests fast.
SMALL = TinyModelConfig(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128)
QUICK = ColdStartConfig(steps=3, batch_size=4, lr=1e-3, warmup_steps=1, num_problems=16)


def cached_in(directory) -> ColdStartConfig:
    return replace(QUICK, cache_dir=str(directory))


# Tiny models train several times faster on one intra-op thread on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def small_model(tokenizer, seed=0):
    config = tiny_qwen2_config(
        len(tokenizer),
        SMALL,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return build_model(config, seed=seed)


def test_example_is_chat_prompt_then_solution_then_eos(tokenizer):
    problem = make_problem("2*3+4")
    ids, num_prompt = encode_example(tokenizer, problem)
    assert tokenizer.decode(ids[:num_prompt]) == "<|user|>2*3+4<|im_end|><|assistant|>"
    assert tokenizer.decode(ids[num_prompt:]) == "<think>2*3=6,6+4=10</think>\\boxed{10}<|im_end|>"


def test_collate_pads_right_and_labels_only_the_response(tokenizer):
    examples = [encode_example(tokenizer, make_problem(text)) for text in ("1+2", "12*34-5")]
    input_ids, attention_mask, labels = collate(examples, tokenizer.pad_token_id)
    (short, short_prompt), (long, _) = examples
    assert input_ids.shape == attention_mask.shape == labels.shape == (2, len(long))
    assert input_ids[0, : len(short)].tolist() == short
    assert (input_ids[0, len(short) :] == tokenizer.pad_token_id).all()
    assert attention_mask[0].tolist() == [1] * len(short) + [0] * (len(long) - len(short))
    assert (labels[0, :short_prompt] == IGNORE_INDEX).all() and (
        labels[0, len(short) :] == IGNORE_INDEX
    ).all()
    assert labels[0, short_prompt : len(short)].tolist() == short[short_prompt:]


def test_loss_ignores_prompt_and_padding(tokenizer):
    model = small_model(tokenizer).eval()
    examples = [encode_example(tokenizer, make_problem(text)) for text in ("1+2", "12*34-5")]
    input_ids, attention_mask, labels = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        loss = response_loss(model, input_ids, attention_mask, labels)
        logp = model(input_ids=input_ids, attention_mask=attention_mask).logits.log_softmax(-1)
    # By hand: mean of -log p(next token) over the labelled positions only.
    picked = [
        -logp[row, t - 1, labels[row, t]].item()
        for row in range(2)
        for t in range(1, labels.shape[1])
        if labels[row, t] != IGNORE_INDEX
    ]
    assert len(picked) == sum(len(ids) - n for ids, n in examples)
    assert loss.item() == pytest.approx(sum(picked) / len(picked), rel=1e-5)


def test_lr_schedules():
    constant = lr_multiplier(warmup_steps=4, steps=10, schedule="constant")
    assert [constant(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = lr_multiplier(warmup_steps=2, steps=10, schedule="cosine")
    assert cosine(2) == 1.0 and cosine(6) == pytest.approx(0.5) and cosine(10) == pytest.approx(0.0)
    assert math.isclose(cosine(4), 0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError):
        lr_multiplier(1, 10, "linear")


def test_batches_cover_each_epoch_and_group_similar_lengths():
    lengths = torch.randint(10, 60, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    batches = sft._batches(lengths, 4, 8, torch.Generator().manual_seed(0))
    epoch = [next(batches) for _ in range(16)]  # 16 batches of 4 = one pass over the 64 examples
    assert sorted(i for batch in epoch for i in batch) == list(range(64))
    for window in (epoch[:8], epoch[8:]):
        # The 8 batches of a window are consecutive runs of its length-sorted examples.
        spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in window)
        assert all(high <= next_low for (_, high), (next_low, _) in itertools.pairwise(spans))
    plain = sft._batches(lengths, 4, 1, torch.Generator().manual_seed(0))
    plain_epoch = [next(plain) for _ in range(16)]
    assert sorted(i for batch in plain_epoch for i in batch) == list(range(64))

    def padded_tokens(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded_tokens(epoch) < 0.9 * padded_tokens(plain_epoch)


def test_loss_decreases_and_is_deterministic(tokenizer):
    problems = generate_problems(8, split="train", seed=0, settings=TASK)
    cfg = ColdStartConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=3, seed=0)
    losses = run_sft(small_model(tokenizer), tokenizer, problems, cfg, log_every=10)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0]
    assert run_sft(small_model(tokenizer), tokenizer, problems, cfg, log_every=10) == losses


def test_denormals_are_flushed(tokenizer):
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    run_sft(
        small_model(tokenizer),
        tokenizer,
        [make_problem("1+2")],
        ColdStartConfig(steps=1, batch_size=1, lr=1e-3, warmup_steps=1, seed=0),
    )
    # 1e-30 * 1e-10 is a float32 denormal; flushed, it becomes exactly zero.
    assert (torch.tensor([1e-30]) * 1e-10).item() == 0.0


def test_unknown_characters_are_refused(tokenizer):
    problem = make_problem("1+2")
    bad = type(problem)(id="x", problem="1+2=?", answer="3", solution=problem.solution)
    with pytest.raises(ValueError, match=r"\['\?'\]"):
        encode_example(tokenizer, bad)


def count_calls(monkeypatch, trained_on=None):
    """The configs of every SFT run from here on; the problems they trained on go to `trained_on`."""
    calls = []
    real = sft.run_sft

    def spy(model, tokenizer, problems, cfg, **kwargs):
        calls.append(cfg)
        if trained_on is not None:
            trained_on.extend(problems)
        return real(model, tokenizer, problems, cfg, **kwargs)

    monkeypatch.setattr(sft, "run_sft", spy)
    return calls


def test_cache_trains_once_then_reuses(tmp_path, monkeypatch):
    calls = count_calls(monkeypatch)
    path = cached_cold_start(TASK, cached_in(tmp_path), SMALL)
    assert len(calls) == 1 and calls[0].steps == 3
    assert path.name == f"cold-start-{cold_start_key(TASK, QUICK, SMALL)}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no staging directory left
    assert {"config.json", "model.safetensors", "tokenizer.json", "cold_start.json"} <= {
        p.name for p in path.iterdir()
    }
    assert cached_cold_start(TASK, cached_in(tmp_path), SMALL) == path
    assert len(calls) == 1
    model, tokenizer = load_model(str(path)), load_tokenizer(str(path))
    assert model.config.hidden_size == SMALL.hidden_size and len(tokenizer) == model.config.vocab_size
    # Loaded beside the Qwen2 config.json, the tokenizer encodes as the one that trained the model.
    text = "<|user|>1 + 2<|im_end|><|assistant|><think> 1+2=3,\n 3</think>\\boxed{3}<|im_end|>"
    assert tokenizer(text)["input_ids"] == build_tokenizer()(text)["input_ids"]


def test_other_settings_get_another_directory():
    keys = {
        cold_start_key(TASK, QUICK, SMALL),
        cold_start_key(DifficultyConfig(max_operands=3), QUICK, SMALL),
        cold_start_key(
            TASK, ColdStartConfig(steps=4, batch_size=4, lr=1e-3, warmup_steps=1, num_problems=16), SMALL
        ),
        cold_start_key(TASK, QUICK, TinyModelConfig()),
    }
    assert len(keys) == 4


def test_interrupted_run_is_not_taken_as_a_cache(tmp_path, monkeypatch):
    # A run killed while saving leaves a staging directory with part of the files.
    final_name = f"cold-start-{cold_start_key(TASK, QUICK, SMALL)}"
    staging = tmp_path / f".tmp-{final_name}-abc123"
    staging.mkdir()
    (staging / "config.json").write_text("{}")
    calls = count_calls(monkeypatch)
    path = cached_cold_start(TASK, cached_in(tmp_path), SMALL)
    assert len(calls) == 1 and path == tmp_path / final_name
    assert load_model(str(path)).config.hidden_size == SMALL.hidden_size


def test_failure_while_saving_leaves_no_cache(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("killed while saving")

    monkeypatch.setattr(type(build_tokenizer()), "save_pretrained", fail)
    with pytest.raises(RuntimeError, match="killed"):
        cached_cold_start(TASK, cached_in(tmp_path), SMALL)
    assert list(tmp_path.iterdir()) == []  # neither a cache nor the staging directory


def test_the_default_cold_start_keeps_its_key():
    # The key every cache of the embedded default was made under: a second built-in task must not move it.
    assert cold_start_key(DifficultyConfig(), ColdStartConfig(), TinyModelConfig()) == "c98c2d8a3e7862f0"


def test_the_long_task_gets_a_key_of_its_own():
    long_task = LongDifficultyConfig()
    keys = {
        cold_start_key(TASK, QUICK, SMALL),
        cold_start_key(long_task, QUICK, SMALL),
        cold_start_key(replace(long_task, max_multiplier=20), QUICK, SMALL),
    }
    assert len(keys) == 3


def test_the_long_task_cold_start_trains_on_its_teacher_solutions(tmp_path, monkeypatch):
    trained_on = []
    count_calls(monkeypatch, trained_on)
    long_task = LongDifficultyConfig(min_multiplier=2, max_multiplier=6)  # short enough for SMALL's positions
    path = cached_cold_start(long_task, cached_in(tmp_path), SMALL)
    problems = trained_on
    assert len(problems) == QUICK.num_problems and all(p.id.startswith("long-") for p in problems)
    assert problems == teacher_problems(long_task, QUICK, build_tokenizer())
    assert all(grade(p.solution, p.answer) for p in problems)  # the teacher's answer, wrong after a slip
    assert all("\n" in p.solution and "," not in p.solution for p in problems)
    record = json.loads((path / "cold_start.json").read_text())
    assert record["task"] == {**asdict(long_task), "name": "long_arithmetic"}


def test_max_response_tokens_keeps_the_shorter_teacher_solutions():
    tokenizer = build_tokenizer()
    long_task = LongDifficultyConfig(min_multiplier=2, max_multiplier=40)
    every = teacher_problems(long_task, QUICK, tokenizer)
    capped = teacher_problems(long_task, replace(QUICK, max_response_tokens=120), tokenizer)
    tokens = {p.id: len(tokenizer(p.solution + tokenizer.eos_token)["input_ids"]) for p in every}
    assert capped == [p for p in every if tokens[p.id] <= 120]
    assert 0 < len(capped) < len(every) and max(tokens[p.id] for p in capped) > 100
    with pytest.raises(ValueError, match="max_response_tokens=5 keeps none"):
        teacher_problems(long_task, replace(QUICK, max_response_tokens=5), tokenizer)
    # A cap is part of the key; no cap leaves the key as it was before the setting existed.
    assert cold_start_key(long_task, replace(QUICK, max_response_tokens=120), SMALL) != cold_start_key(
        long_task, QUICK, SMALL
    )
