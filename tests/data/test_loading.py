"""Datasets by name through the one loading function (lrm_fast/data/loading.py), offline: files shaped like
the study's (tests/study_data.py), a folder in a dataset repository's layout, a URL served on loopback,
and the catalogue's entries resolved to load_dataset's arguments without downloading anything."""

import functools
import http.server
import threading
from dataclasses import replace

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from study_data import INSTRUCTION, MC_INSTRUCTION, OSI_SOLUTIONS, QUESTIONS, local_catalogue, verl_rows

import lrm_fast.config.datasets as catalogue_module
from lrm_fast.cli import data as data_cli
from lrm_fast.config import BenchmarkConfig, DataConfig
from lrm_fast.config.datasets import Columns, DatasetSource, catalogue, parse_catalogue, resolve_source
from lrm_fast.data.examples import PromptExample, load_prompts
from lrm_fast.data.loading import content_hash, load_arguments, load_rows
from lrm_fast.data.prompts import DEEPSCALER_TEMPLATE, prompt_template
from lrm_fast.data.sources import load_examples
from lrm_fast.evaluation.benchmarks import load_benchmark
from lrm_fast.levers.injection import load_solution_bank


@pytest.fixture
def study(tmp_path, monkeypatch):
    """The catalogue with every entry pointed at a local stand-in of the study's file."""
    entries = local_catalogue(tmp_path / "study")
    monkeypatch.setattr(catalogue_module, "catalogue", lambda: entries)
    monkeypatch.setattr(data_cli, "catalogue", lambda: entries)
    return entries


@pytest.fixture
def offline(monkeypatch):
    """As HF_HUB_OFFLINE=1: any request fails at once (the cache still serves)."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


# ---------------------------------------------------------------------------------- the study's data


def test_study_training_data_maps_the_chat_prompt_and_the_nested_answer(study):
    data = DataConfig(
        name="file", train_path="catalogue:deepscaler_dedup_long", heldout_path="catalogue:aime24_val"
    )
    train, heldout = load_examples(data, num_heldout=1)
    # The problem is the user message without the instruction it ends with; the run's template adds the
    # same instruction back, so the model sees exactly the study's user message.
    assert [(e.id, e.problem, e.answer) for e in train] == [
        (str(i), q, a) for i, (q, a) in enumerate(QUESTIONS)
    ]
    assert [e.problem for e in heldout] == [QUESTIONS[0][0]]
    stored = pq.read_table(study["deepscaler_dedup_long"].path).column("prompt").to_pylist()
    assert [prompt_template(data).replace("{problem}", e.problem) for e in train] == [
        chat[0]["content"] for chat in stored
    ]
    # The same file named by path, with the mapping as keys: the instruction stays in the problem.
    by_keys = replace(
        data,
        train_path=study["deepscaler_dedup_long"].path,
        heldout_path=None,
        problem_key="prompt",
        answer_key="reward_model.ground_truth",
    )
    assert [e.problem for e in load_examples(by_keys, 0)[0]] == [q + INSTRUCTION for q, _ in QUESTIONS]


def test_upstream_training_data_with_the_study_validation_set(study):
    data = DataConfig(
        name="file", train_path="catalogue:deepscaler_preview", heldout_path="catalogue:aime24_val"
    )
    train, heldout = load_examples(data, 5)
    assert [(e.problem, e.answer) for e in train] == QUESTIONS
    assert [(e.problem, e.answer) for e in heldout] == QUESTIONS[:2]  # one template fits both
    assert prompt_template(data).replace("{problem}", QUESTIONS[0][0]) == QUESTIONS[0][0] + INSTRUCTION


def test_osi_solution_bank_from_the_dataset_column(study):
    train, _ = load_examples(DataConfig(name="file", train_path="catalogue:osi_offline_samples"), 0)
    assert [e.solutions for e in train] == [tuple(s) for s in OSI_SOLUTIONS]


def test_osi_solution_bank_from_a_separate_dataset_keyed_by_id(tmp_path, monkeypatch, study):
    plain = tmp_path / "plain.parquet"  # the default columns, named by path
    pq.write_table(pa.table({"id": ["p1"], "solutions": [["\\boxed{2}"]]}), plain)
    assert load_solution_bank(plain) == {"p1": ("\\boxed{2}",)}
    bank = tmp_path / "bank.parquet"  # other column names, through a catalogue entry's mapping
    pq.write_table(pa.table({"uid": [7, 8], "texts": [["a", "b"], ["c"]]}), bank)
    entries = {**study, "bank": DatasetSource(str(bank), columns=Columns(id="uid", solutions="texts"))}
    monkeypatch.setattr(catalogue_module, "catalogue", lambda: entries)
    assert load_solution_bank("catalogue:bank") == {"7": ("a", "b"), "8": ("c",)}
    with pytest.raises(
        ValueError, match=r"bank\.parquet \(split train\): no column 'id' \(columns: uid, texts\)"
    ):
        load_solution_bank(bank)


def test_study_benchmarks_with_their_columns_and_templates(study):
    def load(name):
        return load_benchmark(BenchmarkConfig(name=name, path=f"catalogue:{name}"))

    aime = load("aime24")
    assert aime.template == DEEPSCALER_TEMPLATE and aime.examples[0].answer == QUESTIONS[0][1]
    assert [e.id for e in load("aime25").examples] == ["0", "1", "2"]
    assert load("amc").examples[0].answer == "142.0"  # stored as a float, graded as text like the study
    assert load("math500").examples[1].id == "test/algebra/1.json"
    assert load("minerva").examples[0] == PromptExample(
        id="9", problem="Give $0.015$ to one significant figure.", answer="0.01\n", alternatives=("0.02\n",)
    )  # every accepted form, as the study grades them
    assert load("olympiad_bench").examples[0].answer == "2"
    for name, letter in (("gpqa_diamond", "D"), ("mmlu_stem", "B"), ("gaokao_math_qa", "B")):
        benchmark = load(name)
        assert benchmark.template == "{problem}" + MC_INSTRUCTION  # the study's letter instruction
        assert benchmark.examples[0].answer == letter  # options are in the problem text


# ------------------------------------------------------------------------ a folder, splits, subsets


@pytest.fixture
def repo(tmp_path):
    """A dataset repository's layout: shards per split, and a README whose YAML declares two configs."""
    root = tmp_path / "toy-dataset"
    (root / "data").mkdir(parents=True)
    (root / "hard").mkdir()
    for shard in range(2):
        rows = {"question": [f"q{shard}a", f"q{shard}b"], "final": [f"{shard}a", f"{shard}b"]}
        pq.write_table(pa.table(rows), root / "data" / f"train-0000{shard}-of-00002.parquet")
    pq.write_table(
        pa.table({"question": ["t"], "final": ["9"]}), root / "data" / "test-00000-of-00001.parquet"
    )
    pq.write_table(pa.table({"question": ["h"], "final": ["7"]}), root / "hard" / "test.parquet")
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
        "  - split: test\n    path: data/test-*\n- config_name: hard\n  data_files:\n  - split: test\n"
        "    path: hard/test.parquet\n---\n# toy\n"
    )
    return root


COLUMNS = Columns(problem="question", answer="final")


def test_folder_split_and_subset_selection(repo):
    shards = load_prompts(DatasetSource(str(repo), columns=COLUMNS))
    assert [(e.problem, e.answer) for e in shards] == [
        ("q0a", "0a"),
        ("q0b", "0b"),
        ("q1a", "1a"),
        ("q1b", "1b"),
    ]
    assert [e.answer for e in load_prompts(DatasetSource(str(repo), split="test", columns=COLUMNS))] == ["9"]
    hard = resolve_source(
        str(repo), subset="hard", split="test", columns={"problem": "question", "answer": "final"}
    )
    assert load_prompts(hard) == [PromptExample(id="0", problem="h", answer="7")]


@pytest.mark.parametrize(
    ("subset", "split", "message"),
    [
        (None, "validation", r"toy-dataset \(split validation\): Unknown split .*'train', 'test'"),
        ("hard", "train", r"toy-dataset \(subset hard, split train\): Unknown split .*'test'"),
        ("easy", "train", r"toy-dataset \(subset easy, split train\): .*'easy' not found.*'default', 'hard'"),
    ],
    ids=["split", "split-of-subset", "subset"],
)
def test_wrong_split_or_subset_names_the_dataset_and_what_exists(repo, subset, split, message):
    with pytest.raises(ValueError, match=message):
        load_rows(DatasetSource(str(repo), subset=subset, split=split))


def test_a_single_file_is_the_train_split(tmp_path):
    pq.write_table(verl_rows(QUESTIONS), tmp_path / "aime.parquet")
    with pytest.raises(ValueError, match=r"aime\.parquet \(split test\): Unknown split .*'train'"):
        load_rows(DatasetSource(str(tmp_path / "aime.parquet"), split="test"))


def test_missing_column_names_dataset_split_and_columns_found(repo, tmp_path):
    with pytest.raises(
        ValueError,
        match=r"toy-dataset \(subset hard, split test\): no column 'problem' \(columns: question, final\)",
    ):
        load_prompts(DatasetSource(str(repo), subset="hard", split="test"))
    pq.write_table(verl_rows(QUESTIONS), tmp_path / "train.parquet")
    nested = Columns(problem="prompt", answer="reward_model.answer")
    with pytest.raises(
        ValueError,
        match=r"no column 'reward_model.answer' "
        r"\(columns: data_source, prompt, ability, reward_model, extra_info\)",
    ):
        load_prompts(tmp_path / "train.parquet", nested)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_text_that_is_not_utf8_is_named_with_its_file_and_line(tmp_path, suffix):
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes(b'[{"problem": "1+1", "answer": "2"},\n {"problem": "caf\xe9", "answer": "3"}]\n')
    with pytest.raises(
        ValueError, match=rf"latin1\{suffix}, line 2: not UTF-8 text \(byte 0xe9 at column 18\)"
    ):
        load_rows(DatasetSource(str(path)))


def test_unknown_dataset_is_named(offline):
    with pytest.raises(
        FileNotFoundError, match=r"no-such-org/no-such-dataset \(split train, unpinned\): not found"
    ):
        load_rows(resolve_source("no-such-org/no-such-dataset"))
    with pytest.raises(
        ValueError, match=r"unknown dataset 'catalogue:aime2024': the catalogue has aime24, aime24_val"
    ):
        load_prompts("catalogue:aime2024")


def test_url_is_cached_and_read_again_offline(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    pq.write_table(verl_rows(QUESTIONS), served / "aime.parquet")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/aime.parquet"
    source = DatasetSource(url, columns=Columns(problem="prompt", answer="reward_model.ground_truth"))
    try:
        online = load_prompts(source)
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    assert load_prompts(source) == online and len(online) == 3  # the server is gone: the cached copy


# ------------------------------------------------------------------------------------ the catalogue

COMMIT = "fe466d7b58e68701368ed10225ee00ba71bb2c18"
RAW = f"https://raw.githubusercontent.com/takagi97/Dissect-Long-Reason-Models/{COMMIT}/"
STUDY_FILES = {  # catalogue entry -> the study's file (the list)
    "deepscaler_dedup_long": "data/train/deepscaler-train.dedup_long.parquet",
    "osi_offline_samples": "data/train/offline_samples.0.25.dedup_long.sample2560.parquet",
    "aime24_val": "data/train/aime.parquet",
    "aime24": "data/test/aime.json",
    "aime25": "data/test/aime25.json",
    "amc": "data/test/amc.json",
    "math500": "data/test/math.json",
    "minerva": "data/test/minerva.json",
    "olympiad_bench": "data/test/olympiad_bench.json",
    "gpqa_diamond": "data/test/gpqa_diamond.json",
    "mmlu_stem": "data/test/mmlu_stem.json",
    "gaokao_math_qa": "data/test/gaokao_math_qa.json",
}


def test_catalogue_entries_resolve_to_pinned_loader_arguments():
    entries = catalogue()
    assert set(entries) == {*STUDY_FILES, "deepscaler_preview"}
    for name, file in STUDY_FILES.items():
        builder = "parquet" if file.endswith(".parquet") else "json"
        assert load_arguments(entries[name]) == {"path": builder, "data_files": RAW + file, "split": "train"}
    upstream = entries["deepscaler_preview"]
    assert load_arguments(upstream) == {
        "path": "agentica-org/DeepScaleR-Preview-Dataset",
        "name": None,
        "split": "train",
        "revision": None,
    }
    assert "unpinned" in upstream.describe() and "unpinned" in upstream.note.lower()
    assert all(entry.note for entry in entries.values())


def test_catalogue_column_mappings_and_templates():
    entries = catalogue()
    verl = Columns(problem="prompt", answer="reward_model.ground_truth")
    for name in ("deepscaler_dedup_long", "osi_offline_samples", "aime24_val"):
        assert (entries[name].strip_suffix, entries[name].template) == (INSTRUCTION, None)
        assert DataConfig().prompt_suffix == INSTRUCTION  # what the run's template adds back
    assert entries["aime24_val"].columns == entries["deepscaler_dedup_long"].columns == verl
    assert entries["osi_offline_samples"].columns == replace(verl, solutions="offline_samples_str_list")
    for name in ("gpqa_diamond", "mmlu_stem", "gaokao_math_qa"):
        assert entries[name].template == "{problem}" + MC_INSTRUCTION
    assert (entries["math500"].columns.id, entries["minerva"].columns.id) == ("unique_id", "idx")


def test_a_catalogue_entry_with_an_unknown_key_is_refused():
    with pytest.raises(ValueError, match=r"catalogue entry 'x': unknown keys \['colums'\]"):
        parse_catalogue("entries:\n  x: {path: a.json, colums: {problem: q}}\n")
    with pytest.raises(ValueError, match=r"catalogue entry 'x': unknown keys \['question'\]"):
        parse_catalogue("entries:\n  x: {path: a.json, columns: {question: q}}\n")


# -------------------------------------------------------------------------------- hash and lrm-fast-data


def test_content_hash_depends_on_the_rows_not_the_format(tmp_path):
    rows = [{"problem": "1+1", "answer": "2"}, {"problem": "2+2", "answer": "4"}]
    (tmp_path / "a.jsonl").write_text(
        "".join(f'{{"problem": "{r["problem"]}", "answer": "{r["answer"]}"}}\n' for r in rows)
    )
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[::-1]), tmp_path / "b.parquet")
    hashes = [
        content_hash(load_rows(resolve_source(str(tmp_path / f))))
        for f in ("a.jsonl", "a.parquet", "b.parquet")
    ]
    assert hashes[0] == hashes[1] != hashes[2]


def test_lrm_fast_data_fetches_and_prints_rows_and_hashes(study, capsys):
    assert data_cli.main(["aime24", "osi_offline_samples"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected_hash = content_hash(load_rows(study["aime24"]))
    assert lines[0].split()[:4] == ["aime24", "3", "rows", f"sha256:{expected_hash}"]
    assert lines[1].split()[:3] == ["osi_offline_samples", "3", "rows"]
    assert data_cli.main(["--list"]) == 0
    assert "catalogue:deepscaler_preview" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"unknown entries \['aime2024'\]"):
        data_cli.main(["aime2024"])
