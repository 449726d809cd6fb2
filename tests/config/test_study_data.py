"""The study's runs and evaluation suite name their data: every experiment and every benchmarks option
composes, and its datasets resolve to catalogue entries (conf/catalogue.yaml) that load, here from local
stand-ins of the study's files (tests/study_data.py). Also the checks a config's dataset names get
before anything is read."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from study_data import INSTRUCTION, local_catalogue

import lrm_fast.config.datasets as catalogue_module
from lrm_fast.cli.configs import register_configs
from lrm_fast.config import EvalAppConfig, TrainConfig, validate, validate_eval
from lrm_fast.config.datasets import CATALOGUE_PREFIX, catalogue_entry, check_source
from lrm_fast.data.prompts import prompt_template
from lrm_fast.data.sources import load_examples
from lrm_fast.evaluation.benchmarks import load_benchmark

CONF = Path(__file__).resolve().parents[2] / "conf"
# The study's runs; long_* are the built-in long task's stages (tests/config/test_config.py).
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if not p.stem.startswith("long_"))
SUITES = sorted(path.stem for path in (CONF / "benchmarks").glob("*.yaml"))
# The data keys the experiment files set: project additions (the study passes file paths to its scripts).
DATA_KEYS = ("train_path", "heldout_path")
# The study's data/test/*.json, by catalogue entry.
STUDY_SUITE = {
    "aime24",
    "aime25",
    "amc",
    "math500",
    "minerva",
    "olympiad_bench",
    "gpqa_diamond",
    "mmlu_stem",
    "gaokao_math_qa",
}


def _compose(config_name: str, overrides: list[str]):
    register_configs()
    with initialize_config_module(config_module="lrm_fast.conf", version_base="1.3"):
        return OmegaConf.to_object(compose(config_name=config_name, overrides=overrides))


@pytest.fixture
def study(tmp_path, monkeypatch):
    entries = local_catalogue(tmp_path / "study")
    monkeypatch.setattr(catalogue_module, "catalogue", lambda: entries)
    return entries


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_names_catalogue_data_that_loads(experiment, study):
    cfg: TrainConfig = _compose("config", [f"+experiment={experiment}", "model.path=/models/x"])
    validate(cfg)
    paths = [getattr(cfg.data, key) for key in DATA_KEYS]
    assert all(path.startswith(CATALOGUE_PREFIX) for path in paths), paths
    train_entry = catalogue_entry(cfg.data.train_path)
    expected = "osi_offline_samples" if experiment == "osi_24k" else "deepscaler_dedup_long"
    assert train_entry == study[expected] and cfg.data.heldout_path == "catalogue:aime24_val"
    train, heldout = load_examples(cfg.data, cfg.eval.problems)
    assert train and heldout and prompt_template(cfg.data) == "{problem}" + INSTRUCTION
    if cfg.injection.name == "osi":  # the bank is the training data's column: no separate bank
        assert cfg.injection.bank_path is None and any(example.solutions for example in train)


@pytest.mark.parametrize("suite", SUITES)
def test_every_benchmark_suite_composes_and_resolves(suite, study):
    overrides = [f"benchmarks={suite}", "model.path=/models/x"]
    if suite == "file":
        overrides += ["benchmarks.0.path=catalogue:amc"]
    cfg: EvalAppConfig = _compose("evaluate", overrides)
    validate_eval(cfg)
    paths = [spec.path for spec in cfg.benchmarks]
    if suite in ("arithmetic", "long_arithmetic"):
        assert paths == [f"builtin:{suite}"]
        return
    assert all(path.startswith(CATALOGUE_PREFIX) for path in paths), paths
    names = {path.removeprefix(CATALOGUE_PREFIX) for path in paths}
    assert names == (STUDY_SUITE if suite == "study" else {"amc"})
    assert all(load_benchmark(spec).examples for spec in cfg.benchmarks)


def test_the_study_suite_spends_the_study_samples_over_four_rounds():
    cfg: EvalAppConfig = _compose("evaluate", ["benchmarks=study", "model.path=/models/x"])
    study_k = {
        "aime24": 64,
        "aime25": 64,
        "amc": 64,
        "gpqa_diamond": 32,
        "gaokao_math_qa": 32,
        "mmlu_stem": 4,
    }
    budgets = {spec.name: spec.samples_per_problem * cfg.max_rounds for spec in cfg.benchmarks}
    assert {name: budgets[name] for name in study_k} == study_k


def test_the_study_suite_grades_with_the_studys_think_rule():
    assert _compose("evaluate", ["benchmarks=study", "model.path=/models/x"]).think_format
    assert not _compose("evaluate", ["model.path=/models/x"]).think_format  # the built-in task's suite


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        ("catalogue:aime2024", ValueError, r"data.train_path: unknown dataset 'catalogue:aime2024'"),
        ("missing/train.jsonl", FileNotFoundError, r"data.train_path: no such file: missing/train.jsonl"),
        ("train.csv", ValueError, r"data.train_path must be a \.json, \.jsonl, \.parquet file, a folder"),
        ("https://example.org/train.csv", ValueError, r"data.train_path must be a \.json"),
        ("not a hub id", ValueError, r"data.train_path must be .*, got 'not a hub id'"),
    ],
    ids=["unknown-entry", "missing-file", "suffix", "url-suffix", "not-a-hub-id"],
)
def test_check_source_names_the_key(path, error, message):
    with pytest.raises(error, match=message):
        check_source("data.train_path", path)


@pytest.mark.parametrize(
    "path", ["catalogue:aime24", "agentica-org/DeepScaleR-Preview-Dataset", "https://example.org/a.parquet"]
)
def test_check_source_accepts_names_without_reading_them(path):
    check_source("data.train_path", path)
