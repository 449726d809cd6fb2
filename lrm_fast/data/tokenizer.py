r"""Character-level tokenizer of the built-in arithmetic task, built locally with `tokenizers`.

Vocabulary (28 ids): the special tokens ``<|pad|> <|unk|> <|im_end|> <|user|> <|assistant|>``, the
reasoning markers ``<think> </think> \boxed{`` as single tokens, and one token per character of
`ALPHABET`. ``<|im_end|>`` is the end-of-sequence token. The markers are added as *non-special*
tokens, as ``<think>`` is in Qwen3 and R1-distilled tokenizers, so ``decode(...,
skip_special_tokens=True)`` keeps them and the verifier still sees ``\boxed{...}``.

Unknown characters map to ``<|unk|>`` rather than raising: transformers, chat templates and vLLM
call the Rust backend directly, which cannot raise, and a decode must never fail. Data entering
training is checked instead with `require_known`, which raises a `ValueError` naming the
characters, so a wrong dataset fails loudly at the boundary instead of training on ``<|unk|>``.

Chat format (one turn; ``apply_chat_template(..., add_generation_prompt=True)`` gives the prompt)::

    <|user|>12+3*4<|im_end|><|assistant|>

and the response the model writes is ``<think>...</think>\boxed{...}<|im_end|>``.
"""

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
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


def build_tokenizer(alphabet: str = ALPHABET) -> PreTrainedTokenizerFast:
    """A fresh character-level tokenizer; ids: special tokens, then markers, then `alphabet`."""
    if len(set(alphabet)) != len(alphabet):
        raise ValueError(f"alphabet has repeated characters: {alphabet!r}")
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *MARKER_TOKENS, *alphabet))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character is its own pre-token ([\s\S] also matches newlines); the added tokens below
    # are matched before this split, so they stay whole.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Fuse joins decoded tokens without the spaces WordLevel would put between them.
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKER_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=EOS,
        # Left padding is what batched generation needs; training pads on its own (right).
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )


def load_tokenizer(path_or_name: str) -> PreTrainedTokenizerBase:
    """A tokenizer from a local directory or the HF cache; never downloads."""
    return AutoTokenizer.from_pretrained(path_or_name, local_files_only=True)


def unknown_characters(tokenizer: PreTrainedTokenizerBase, text: str) -> list[str]:
    """The characters of `text` (in order, without repeats) that encode to the unk token."""
    if tokenizer.unk_token_id is None:
        return []
    encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    unknown = [
        text[start:end]
        for token_id, (start, end) in zip(encoding.ids, encoding.offsets, strict=True)
        if token_id == tokenizer.unk_token_id
    ]
    return list(dict.fromkeys(unknown))


def require_known(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    """Raise `ValueError` if any character of `text` falls outside the tokenizer's vocabulary."""
    unknown = unknown_characters(tokenizer, text)
    if unknown:
        raise ValueError(f"characters {unknown} of {text!r} are not in the tokenizer's vocabulary")
