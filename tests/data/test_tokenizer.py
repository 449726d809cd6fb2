"""The character-level tokenizer: round trip, single-token markers, chat template, unknowns, save/load."""

import jinja2
import pytest

from lrm_fast.config import DifficultyConfig
from lrm_fast.data.arithmetic import generate_problems
from lrm_fast.data.tokenizer import (
    ALPHABET,
    ASSISTANT,
    BOXED,
    EOS,
    MARKER_TOKENS,
    PAD,
    SPECIAL_TOKENS,
    THINK_END,
    THINK_START,
    UNK,
    USER,
    build_tokenizer,
    load_tokenizer,
    require_known,
    unknown_characters,
)

PROBLEMS = generate_problems(200, split="train", seed=0, settings=DifficultyConfig(parentheses_prob=0.5))


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_vocabulary_is_small_and_complete(tokenizer):
    assert len(tokenizer) == len(SPECIAL_TOKENS) + len(MARKER_TOKENS) + len(ALPHABET) == 28
    assert tokenizer.pad_token == PAD and tokenizer.pad_token_id == 0
    assert tokenizer.eos_token == EOS and tokenizer.unk_token == UNK
    assert tokenizer.bos_token is None


def test_every_character_is_one_token_and_text_round_trips(tokenizer):
    for problem in PROBLEMS:
        for text in (problem.problem, problem.solution + EOS):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.decode(ids) == text
            assert tokenizer.unk_token_id not in ids
    text = "12+3*4\n= 5,(6)"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == list(text)


@pytest.mark.parametrize("token", [*SPECIAL_TOKENS, *MARKER_TOKENS])
def test_specials_and_markers_are_single_tokens(tokenizer, token):
    ids = tokenizer(f"1{token}2", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3
    assert tokenizer.convert_ids_to_tokens(ids[1]) == token


def test_solution_tokens(tokenizer):
    ids = tokenizer("<think>2*3=6</think>\\boxed{6}<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == [THINK_START, *"2*3=6", THINK_END, BOXED, "6", "}", EOS]


def test_skip_special_tokens_keeps_the_reasoning_markers(tokenizer):
    ids = tokenizer(
        f"{USER}1+2{EOS}{ASSISTANT}<think>1+2=3</think>\\boxed{{3}}{EOS}{PAD}", add_special_tokens=False
    )
    assert tokenizer.decode(ids["input_ids"], skip_special_tokens=True) == "1+2<think>1+2=3</think>\\boxed{3}"


def test_chat_template(tokenizer):
    messages = [{"role": "user", "content": "12+3*4"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|user|>12+3*4<|im_end|><|assistant|>"
    messages.append({"role": "assistant", "content": "<think>3*4=12,12+12=24</think>\\boxed{24}"})
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert full == prompt + "<think>3*4=12,12+12=24</think>\\boxed{24}<|im_end|>"
    with pytest.raises(jinja2.exceptions.TemplateError, match="only user and assistant"):
        tokenizer.apply_chat_template([{"role": "system", "content": "1"}], tokenize=False)


def test_unknown_characters_map_to_unk_and_require_known_raises(tokenizer):
    ids = tokenizer("1+x/2", add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.unk_token_id) == 2
    assert unknown_characters(tokenizer, "1+x/2x") == ["x", "/"]
    assert unknown_characters(tokenizer, PROBLEMS[0].solution) == []
    with pytest.raises(ValueError, match=r"\['é'\]"):
        require_known(tokenizer, "1+é")
    require_known(tokenizer, PROBLEMS[0].solution)


def test_batches_pad_on_the_left_for_generation(tokenizer):
    batch = tokenizer(["1+2", "11+22"], add_special_tokens=False, padding=True)
    assert batch["input_ids"][0][:2] == [tokenizer.pad_token_id] * 2
    assert batch["attention_mask"][0] == [0, 0, 1, 1, 1]


def test_save_and_load_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, tokenizer.eos_token_id, 1)
    assert loaded.padding_side == "left"
    messages = [{"role": "user", "content": PROBLEMS[0].problem}]
    assert loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    )
    for problem in PROBLEMS[:20]:
        text = problem.solution + EOS
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert loaded.decode(loaded(text)["input_ids"]) == text
