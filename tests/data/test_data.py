"""Tests for prompt loading from local files (JSON Lines, Parquet), the prompt template and the resumable
sampler. Datasets by name (folders, URLs, the catalogue) are tested in test_loading.py."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from lrm_fast.data.examples import Columns, PromptExample, load_prompts
from lrm_fast.data.prompts import DEEPSCALER_TEMPLATE, encode_prompts, format_prompt
from lrm_fast.data.sampler import PromptSampler


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- loading


def test_load_jsonl_all_columns(tmp_path):
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"id": "p1", "problem": "1+1?", "answer": "2", "solutions": ["1+1=2, \\boxed{2}"]},
            {"problem": "Half of 1?", "answer": "\\frac{1}{2}"},  # optional columns absent
            {"id": 7, "problem": "6*7?", "answer": 42, "solutions": None},  # numbers become text
        ],
    )
    assert load_prompts(path) == [
        PromptExample(id="p1", problem="1+1?", answer="2", solutions=("1+1=2, \\boxed{2}",)),
        PromptExample(id="1", problem="Half of 1?", answer="\\frac{1}{2}"),
        PromptExample(id="7", problem="6*7?", answer="42"),
    ]


def test_a_list_answer_keeps_every_accepted_form(tmp_path):
    # Minerva's layout: each form as the study lists it, some only differing by a trailing newline.
    rows = [{"problem": "p", "answer": ["0.01\n", "0.02\n"]}, {"problem": "q", "answer": ["188", "188\n"]}]
    first, second = load_prompts(write_jsonl(tmp_path / "minerva.jsonl", rows))
    assert (first.answer, first.alternatives, first.answers) == ("0.01\n", ("0.02\n",), ("0.01\n", "0.02\n"))
    assert second.answers == ("188",)


def test_load_jsonl_custom_columns_and_blank_lines(tmp_path):
    # DeepScaleR's own files call the worked solution "solution" and hold one string.
    path = tmp_path / "deepscaler.jsonl"
    path.write_text(
        '{"question": "2+2?", "final": "4", "solution": "It is \\\\boxed{4}."}\n\n'
        '{"question": "3+3?", "final": "6"}\n',
        encoding="utf-8",
    )
    columns = Columns(problem="question", answer="final", solutions="solution")
    examples = load_prompts(path, columns)
    assert [(e.id, e.problem, e.answer, e.solutions) for e in examples] == [
        ("0", "2+2?", "4", ("It is \\boxed{4}.",)),
        ("1", "3+3?", "6", ()),
    ]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        pytest.param(
            ['{"problem": "a", "answer": "1"}', "", '{"problem": "b", "answer": }'],
            r"bad\.jsonl, line 3: invalid JSON",
            id="bad-json-after-blank-line",
        ),
        pytest.param(
            ['{"problem": "a", "answer": "1"}', '["problem", "answer"]'],
            r"bad\.jsonl, line 2: expected a JSON object, got list",
            id="not-object",
        ),
        pytest.param(
            ['["problem", "answer"]'],
            r"bad\.jsonl \(split train\): no column 'problem' \(columns: text\)",
            id="only-lists",
        ),
        pytest.param(
            ['{"problem": "a", "answer": "1"}', '{"problem": "b", "solution": "x"}'],
            r"bad\.jsonl, line 2: no value in column 'answer' \(the row has: problem, solution\)",
            id="missing-answer",
        ),
        pytest.param(
            ['{"answer": "1"}'],
            r"bad\.jsonl \(split train\): no column 'problem' \(columns: answer\)",
            id="missing-problem",
        ),
        pytest.param(
            ['{"problem": "a", "answer": []}'],
            r"bad\.jsonl, line 1: column 'answer' is an empty list",
            id="answer-empty-list",
        ),
        pytest.param(
            ['{"problem": "a", "answer": true}'],
            r"bad\.jsonl, line 1: column 'answer' must be a string or a number, got bool",
            id="answer-bool",
        ),
        pytest.param(
            ['{"problem": 3, "answer": "1"}'],
            r"bad\.jsonl, line 1: column 'problem' must be a non-empty string",
            id="problem-number",
        ),
        pytest.param(
            ['{"problem": "  ", "answer": "1"}'],
            r"bad\.jsonl, line 1: column 'problem' must be a non-empty string",
            id="problem-blank",
        ),
        pytest.param(
            ['{"problem": "a", "answer": "1", "solutions": ["ok", 3]}'],
            r"bad\.jsonl, line 1: column 'solutions' must be a list of strings",
            id="solutions-not-strings",
        ),
        pytest.param(
            ['{"problem": "a", "answer": "1", "id": {"k": 1}}'],
            r"bad\.jsonl, line 1: column 'id' must be a string or a number, got dict",
            id="id-dict",
        ),
        pytest.param(
            ['{"problem": "a", "answer": []}'],
            r"bad\.jsonl, line 1: column 'answer' is an empty list",
            id="answer-empty-list",
        ),
        pytest.param(["", "  "], r"bad\.jsonl: no rows", id="empty"),
    ],
)
def test_load_jsonl_errors_name_file_and_line(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_prompts(path)


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nowhere" / "train.jsonl"
    with pytest.raises(FileNotFoundError, match=f"dataset file not found: {path}"):
        load_prompts(path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("problem,answer\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.csv: unsupported file type '\.csv'"):
        load_prompts(path)


def test_load_parquet(tmp_path):
    table = pa.table(
        {
            "problem": ["1+1?", "2+2?"],
            "answer": ["2", "4"],
            "solutions": [["\\boxed{2}", "so \\boxed{2}"], None],
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    assert load_prompts(tmp_path / "train.parquet") == [
        PromptExample(id="0", problem="1+1?", answer="2", solutions=("\\boxed{2}", "so \\boxed{2}")),
        PromptExample(id="1", problem="2+2?", answer="4"),
    ]
    pq.write_table(pa.table({"problem": ["a", "b"], "answer": ["1", None]}), tmp_path / "bad.parquet")
    with pytest.raises(
        ValueError, match=r"bad\.parquet, row 2: no value in column 'answer' \(the row has: problem\)"
    ):
        load_prompts(tmp_path / "bad.parquet")


# ------------------------------------------------------------------------------------------- prompts

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}"
)


def make_tokenizer(chat_template):
    """Word-level tokenizer whose post-processor adds BOS, like many real ones."""
    words = ["<unk>", "<s>", "</s>", "What", "is", "2+2?", "Let's", "think", "<|user|>", "<|end|>"]
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        chat_template=chat_template,
    )


def test_format_prompt_uses_deepscaler_template_and_chat_template():
    expected_content = "What is 2+2? Let's think step by step and output the final answer within \\boxed{}."
    assert DEEPSCALER_TEMPLATE.replace("{problem}", "What is 2+2?") == expected_content
    assert format_prompt("What is 2+2?", make_tokenizer(None)) == expected_content
    assert format_prompt("What is 2+2?", make_tokenizer(CHAT_TEMPLATE)) == (
        f"<s><|user|>{expected_content}<|end|><|assistant|><think>\n"
    )


def test_format_prompt_keeps_latex_braces_and_checks_template():
    problem = "Find $\\frac{a}{b}$ if {a, b} = {1, 2}."
    assert format_prompt(problem, make_tokenizer(None), "Q: {problem}\\boxed{}") == f"Q: {problem}\\boxed{{}}"
    with pytest.raises(ValueError, match="template must contain"):
        format_prompt(problem, make_tokenizer(None), "no placeholder")


def test_encode_prompts_has_exactly_one_bos():
    bos = 1
    examples = [PromptExample(id="0", problem="What is 2+2?", answer="4")]
    with_chat = encode_prompts(examples, make_tokenizer(CHAT_TEMPLATE))[0]
    without_chat = encode_prompts(examples, make_tokenizer(None))[0]
    # The chat template writes BOS itself; the plain path gets it from the post-processor.
    assert with_chat.count(bos) == 1 and with_chat[0] == bos
    assert without_chat.count(bos) == 1 and without_chat[0] == bos
    assert without_chat[1:4] == [3, 4, 5]  # What is 2+2?


# ------------------------------------------------------------------------------------------- sampler


def make_examples(n):
    return [PromptExample(id=str(i), problem=f"problem {i}", answer=str(i)) for i in range(n)]


def ids(batch):
    return [example.id for example in batch]


def test_sampler_epochs_are_permutations_without_the_tail():
    sampler = PromptSampler(make_examples(10), batch_size=3, seed=0)
    epochs = [[i for _ in range(3) for i in ids(sampler.next_batch())] for _ in range(3)]
    for epoch in epochs:
        assert len(epoch) == len(set(epoch)) == 9  # distinct within an epoch; one example left out
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled every epoch
    assert sampler.epoch == 2 and sampler.position == 9


def test_sampler_is_seeded():
    def draw(seed):
        sampler = PromptSampler(make_examples(20), 4, seed)
        return [ids(sampler.next_batch()) for _ in range(12)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


@pytest.mark.parametrize(
    "stop_after", [0, 2, 3, 7], ids=["fresh", "mid-epoch", "epoch-boundary", "later-epoch"]
)
def test_sampler_resumes_exactly(stop_after):
    examples = make_examples(10)
    uninterrupted = PromptSampler(examples, batch_size=3, seed=5)
    expected = [ids(uninterrupted.next_batch()) for _ in range(stop_after + 6)][stop_after:]

    interrupted = PromptSampler(examples, batch_size=3, seed=5)
    for _ in range(stop_after):
        interrupted.next_batch()
    saved = json.loads(json.dumps(interrupted.state_dict()))  # as a checkpoint would store it

    resumed = PromptSampler(examples, batch_size=3, seed=5)
    resumed.load_state_dict(saved)
    assert [ids(resumed.next_batch()) for _ in range(6)] == expected


def test_put_back_prompts_come_first_and_nothing_is_skipped():
    """A request reserves rounds it may not use; put back, they are drawn before the order goes on, so an
    epoch still visits every example once (but the tail)."""
    examples = make_examples(12)
    lazy, reserving = PromptSampler(examples, 2, seed=1), PromptSampler(examples, 2, seed=1)
    reference = [i for _ in range(6) for i in ids(lazy.next_batch())]
    drawn = []
    for _ in range(3):
        first, spare = reserving.next_batch(), reserving.next_batch()  # two rounds reserved, one used
        reserving.put_back(spare)
        drawn += ids(first)
    drawn += [i for _ in range(3) for i in ids(reserving.next_batch())]
    assert drawn == reference
    # Put back, then checkpointed: the resumed sampler draws them first too.
    reserving.put_back(reserving.next_batch())
    saved = json.loads(json.dumps(reserving.state_dict()))
    resumed = PromptSampler(examples, 2, seed=1)
    resumed.load_state_dict(saved)
    assert ids(resumed.next_batch()) == ids(reserving.next_batch())


def test_put_back_prompts_left_at_the_end_of_an_epoch_are_dropped():
    sampler = PromptSampler(make_examples(6), 2, seed=0)
    batches = [sampler.next_batch() for _ in range(3)]  # the whole epoch
    sampler.put_back(batches[-1][:1])  # one left to draw, too few for a batch with the order's end
    assert sampler.next_batch() == [sampler.examples[i] for i in sampler._permutation(1)[:2]]
    assert sampler.epoch == 1 and sampler.position == 2  # the new epoch's order holds it


def test_sampler_refuses_a_mismatched_resume():
    saved = PromptSampler(make_examples(10), batch_size=3, seed=5).state_dict()
    with pytest.raises(ValueError, match="num_examples=10, this one num_examples=11"):
        PromptSampler(make_examples(11), batch_size=3, seed=5).load_state_dict(saved)
    with pytest.raises(ValueError, match="seed=5, this one seed=6"):
        PromptSampler(make_examples(10), batch_size=3, seed=6).load_state_dict(saved)


@pytest.mark.parametrize("batch_size", [0, 11])
def test_sampler_rejects_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 10\]"):
        PromptSampler(make_examples(10), batch_size=batch_size)
