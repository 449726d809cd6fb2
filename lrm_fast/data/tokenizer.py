r"""Character-level tokenizer of the built-in arithmetic task, built locally with `tokenizers`.

Vocabulary (28 ids): the special tokens ``<|pad|> <|unk|> <|im_end|> <|user|> <|assistant|>``, the
reasoning markers ``<think> </think> \boxed{`` as single tokens, and one token per character of
`ALPHABET`. ``<|im_end|>`` is the end-of-sequence token. The markers are added as *non-special*
tokens, as ``<think>`` is in Qwen3 and R1-distilled tokenizers, so ``decode(...,
skip_special_tokens=True)`` keeps them and the verifier still sees ``\boxed{...}``.

The backend is written the way transformers' ``Qwen2Tokenizer`` builds one: a byte-level BPE with the
Qwen2 split regex, NFC and a ByteLevel decoder. It has no merges, so every character is its own token;
space and newline are spelled ``Ġ`` and ``Ċ`` in the vocabulary, as bytes are in byte-level BPE. Why
not something simpler: the trained model is saved with ``model_type=qwen2`` (vLLM runs it as Qwen2),
and transformers 5 (5.19 and later, at least) loads the tokenizer of such a directory as
``Qwen2Tokenizer``, which keeps only the vocabulary and merges of tokenizer.json and rebuilds the rest.
Any other backend would encode differently once saved and loaded; this one comes back the same whether
a version rebuilds it or reads tokenizer.json as it is.

Characters outside the vocabulary are dropped when encoding, as byte-level BPE without an unknown
token does (transformers, chat templates and vLLM call the Rust backend directly, which cannot raise,
and a decode must never fail). ``<|unk|>`` stays in the vocabulary as the unk token, but only the
literal text ``<|unk|>`` encodes to it. Data entering training is checked instead with
`require_known`, which raises a `ValueError` naming the characters, so a wrong dataset fails loudly at
the boundary instead of training on text with characters missing.

Chat format (one turn; ``apply_chat_template(..., add_generation_prompt=True)`` gives the prompt)::

    <|user|>12+3*4<|im_end|><|assistant|>

and the response the model writes is ``<think>...</think>\boxed{...}<|im_end|>``.
"""

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

ALPHABET = "0123456789+-*()=, \n}"
"""Characters with their own token: digits, operators, parentheses, step separators, the closing
brace of the boxed answer, and space/newline so that hand-written prompts still encode."""

PAD, UNK, EOS = "<|pad|>", "<|unk|>", "<|im_end|>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
THINK_START, THINK_END, BOXED = "<think>", "</think>", "\\boxed{"

SPECIAL_TOKENS = (PAD, UNK, EOS, USER, ASSISTANT)
MARKER_TOKENS = (THINK_START, THINK_END, BOXED)

# Roles other than user and assistant have no token: the template raises rather than render
# them as characters the vocabulary does not have.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    + USER
    + "{% elif message['role'] == 'assistant' %}"
    + ASSISTANT
    + "{% else %}{{ raise_exception('only user and assistant roles are supported, got ' + message['role']) }}"
    "{% endif %}"
    "{{ message['content'] }}" + EOS + "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


# Qwen2Tokenizer's split (transformers, models/qwen2/tokenization_qwen2.py). With no merges it changes
# no id; it is here so that the backend equals the one Qwen2Tokenizer rebuilds, offsets included.
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)


def build_tokenizer(alphabet: str = ALPHABET) -> PreTrainedTokenizerFast:
    """A fresh character-level tokenizer; ids: special tokens, then markers, then `alphabet`."""
    if len(set(alphabet)) != len(alphabet):
        raise ValueError(f"alphabet has repeated characters: {alphabet!r}")
    # A character of several bytes would need merges to be one token.
    if not alphabet.isascii():
        raise ValueError(f"alphabet has characters outside ASCII: {alphabet!r}")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    # The byte-level spelling of each character: " " is "Ġ", "\n" is "Ċ", printable ASCII is itself.
    characters = [byte_level.pre_tokenize_str(c)[0][0] for c in alphabet]
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *MARKER_TOKENS, *characters))}
    # No unk token: a character outside the vocabulary is dropped, as Qwen2Tokenizer's BPE does. The
    # other arguments are Qwen2Tokenizer's too, so that the rebuilt backend is this one exactly.
    model = models.BPE(
        vocab=vocab,
        merges=[],
        dropout=None,
        unk_token=None,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
        byte_fallback=False,
    )
    backend = Tokenizer(model)
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"), byte_level]
    )
    backend.decoder = decoders.ByteLevel()
    # Matched before the normalizer and the split, so they stay whole.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKER_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=EOS,
        # Left padding is what batched generation needs; training pads on its own (right).
        padding_side="left",
        # Saved explicitly: the clean-up would turn " ," into "," and break decode(encode(s)) == s.
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def load_tokenizer(path_or_name: str) -> PreTrainedTokenizerBase:
    """A tokenizer from a local directory or the HF cache; never downloads."""
    return AutoTokenizer.from_pretrained(path_or_name, local_files_only=True)


def unknown_characters(tokenizer: PreTrainedTokenizerBase, text: str) -> list[str]:
    """The characters of `text` (in order, without repeats) that no token stands for: dropped by the
    encoding (byte-level BPE without the character) or encoded as the unk token (a tokenizer with one)."""
    encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    covered = set()
    for token_id, (start, end) in zip(encoding.ids, encoding.offsets, strict=True):
        if token_id != tokenizer.unk_token_id:
            covered.update(range(start, end))
    unknown = [c for i, c in enumerate(text) if i not in covered and not _encodes_alone(tokenizer, c)]
    return list(dict.fromkeys(unknown))


def _encodes_alone(tokenizer: PreTrainedTokenizerBase, character: str) -> bool:
    """Whether `character` alone gives a token other than unk. It clears white space that a tokenizer
    with trimmed offsets (GPT-2's ByteLevel post-processor) leaves outside every token's offsets."""
    ids = tokenizer.backend_tokenizer.encode(character, add_special_tokens=False).ids
    return any(token_id != tokenizer.unk_token_id for token_id in ids)


def require_known(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    """Raise `ValueError` if any character of `text` falls outside the tokenizer's vocabulary."""
    unknown = unknown_characters(tokenizer, text)
    if unknown:
        raise ValueError(f"characters {unknown} of {text!r} are not in the tokenizer's vocabulary")
