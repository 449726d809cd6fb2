"""The character-level tokenizer: round trip, single-token markers, chat template, unknowns, save/load."""

import random

import jinja2
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lrm_fast.config import DifficultyConfig, TinyModelConfig
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
from lrm_fast.model.causal_lm import tiny_qwen2_config

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
    assert [tokenizer.decode([i]) for i in ids] == list(text)
    # Byte-level spellings of space and newline; the rest of the alphabet is printable ASCII.
    assert tokenizer.convert_ids_to_tokens(ids[6:9]) == ["Ċ", "=", "Ġ"]


def test_decode_keeps_spaces_before_commas(tokenizer):
    # Transformers' clean-up of tokenization spaces would write "1 , 2" as "1, 2".
    text = "1 , 2 ,3\n ,\n\n  4 "
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_an_alphabet_outside_ascii_is_refused():
    with pytest.raises(ValueError, match="outside ASCII"):
        build_tokenizer("0123é")


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


def test_unknown_characters_are_dropped_and_require_known_raises(tokenizer):
    ids = tokenizer("1+x/2", add_special_tokens=False)["input_ids"]
    assert ids == tokenizer("1+2", add_special_tokens=False)["input_ids"]
    assert unknown_characters(tokenizer, "1+x/2x") == ["x", "/"]
    # Characters of a marker are known inside it only.
    assert unknown_characters(tokenizer, "<think>1</think>\\boxed{1}") == []
    assert unknown_characters(tokenizer, "<thin>\\box") == ["<", "t", "h", "i", "n", ">", "\\", "b", "o", "x"]
    assert unknown_characters(tokenizer, PROBLEMS[0].solution) == []
    with pytest.raises(ValueError, match=r"\['é'\]"):
        require_known(tokenizer, "1+é")
    require_known(tokenizer, PROBLEMS[0].solution)


def test_batches_pad_on_the_left_for_generation(tokenizer):
    batch = tokenizer(["1+2", "11+22"], add_special_tokens=False, padding=True)
    assert batch["input_ids"][0][:2] == [tokenizer.pad_token_id] * 2
    assert batch["attention_mask"][0] == [0, 0, 1, 1, 1]


def test_unknown_characters_with_trimmed_offsets():
    # GPT-2's ByteLevel post-processor trims white space out of the offsets: spaces are in no token's
    # offsets, yet they are known.
    vocab = {"a": 0, "b": 1, "Ġ": 2, "Ġb": 3}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "b")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.post_processor = processors.ByteLevel(trim_offsets=True)
    assert backend.encode("a  b").offsets[1] == (2, 2)
    assert unknown_characters(PreTrainedTokenizerFast(tokenizer_object=backend), "a b  a c") == ["c"]


@pytest.fixture(scope="module")
def saved(tokenizer, tmp_path_factory):
    """The tokenizer saved beside the tiny model's Qwen2 config.json, as a trained run exports it."""
    path = tmp_path_factory.mktemp("tiny_model")
    config = tiny_qwen2_config(len(tokenizer), TinyModelConfig(), pad_token_id=0, eos_token_id=2)
    config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


LOADERS = {"load_tokenizer": load_tokenizer, "AutoTokenizer": AutoTokenizer.from_pretrained}


@pytest.fixture(params=LOADERS.values(), ids=LOADERS.keys())
def loaded(request, saved):
    return request.param(saved)


def _alphabet_strings(n: int) -> list[str]:
    rng = random.Random(0)
    pieces = [*ALPHABET, *MARKER_TOKENS, *SPECIAL_TOKENS, "  ", "\n\n", " \n ", " ,"]
    return ["".join(rng.choices(pieces, k=rng.randint(1, 40))) for _ in range(n)]


# White space of every kind, letters, look-alikes of the byte-level spellings (Ġ Ċ), accents composed
# and not, markers cut short, symbols outside the Basic Multilingual Plane.
FOREIGN = [
    "Let's think step by step.",
    "1 +\t2\r\n= 3\u00a0",
    "Ġ1Ċ2 ĉ",
    "é e\u0301 = 1",
    "<think 1 </think \\boxed 2 {3}",
    "∑ 𝔸 🙂 12+3",
    "<|unk|>1<|pad|>",
]


def test_a_saved_tokenizer_loads_with_the_same_ids(tokenizer, loaded):
    texts = [p.problem for p in PROBLEMS] + [p.solution + EOS for p in PROBLEMS] + _alphabet_strings(500)
    texts += [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False) for t in texts]
    for text in [*texts, *MARKER_TOKENS, *FOREIGN]:
        ids = tokenizer(text)["input_ids"]
        assert loaded(text)["input_ids"] == ids, text
        assert loaded.decode(ids) == tokenizer.decode(ids)
        assert unknown_characters(loaded, text) == unknown_characters(tokenizer, text)
    for text in texts:
        assert loaded.decode(loaded(text)["input_ids"]) == text


def test_a_saved_tokenizer_refuses_unknown_characters(loaded):
    assert unknown_characters(loaded, "Let's think") == ["L", "e", "t", "'", "s", "h", "i", "n", "k"]
    with pytest.raises(ValueError, match=r"\['L', 'e', 't'"):
        require_known(loaded, "1+2 Let's think")
    require_known(loaded, "<think>1 + 2 = 3,\n 3</think>\\boxed{3}")


def test_save_and_load_round_trip(tokenizer, loaded):
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, tokenizer.eos_token_id, 1)
    assert loaded.padding_side == "left"
    messages = [{"role": "user", "content": PROBLEMS[0].problem}]
    assert loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    )
    ids = loaded(f"{USER}1+2{EOS}{ASSISTANT}<think>3</think>\\boxed{{3}}{EOS}")["input_ids"]
    assert loaded.decode(ids, skip_special_tokens=True) == "1+2<think>3</think>\\boxed{3}"
