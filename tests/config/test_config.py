"""Every config file composes into a valid typed TrainConfig; bad values are refused by name."""

from dataclasses import replace
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from lrm_fast.cli.configs import register_configs
from lrm_fast.cli.stages import LONG_STAGES
from lrm_fast.config import LongDifficultyConfig, TrainConfig, check_inputs, validate
from lrm_fast.config.choices import (
    AdvantageEstimator,
    CorrectionLevel,
    CorrectionMode,
    Objective,
    RatioLevel,
    Sampling,
)
from lrm_fast.config.validation import check_world
from lrm_fast.data.tokenizer import build_tokenizer
from lrm_fast.model.cold_start import teacher_problems
from lrm_fast.training.assembly import policy_path

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUP_OPTIONS = sorted(
    (group.name, option.stem)
    for group in CONF.iterdir()
    # experiment/ is composed below; benchmarks/ is lrm-fast-eval's (tests/config/test_study_data.py)
    if group.is_dir() and group.name not in ("experiment", "benchmarks")
    for option in group.glob("*.yaml")
)
# The study's runs; long_* are the built-in long task's stages (tests/config/test_config.py).
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if not p.stem.startswith("long_"))
REQUIRED = {("model", "pretrained"): ["model.path=/models/x"], ("data", "file"): ["data.train_path=x.jsonl"]}


def _compose(overrides: list[str]) -> TrainConfig:
    register_configs()
    with initialize_config_module(config_module="lrm_fast.conf", version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=overrides))


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_config_file_composes(group, option):
    cfg = _compose([f"{group}={option}", *REQUIRED.get((group, option), [])])
    assert isinstance(cfg, TrainConfig)
    if (group, option) != ("data", "file"):  # its file does not exist here
        validate(cfg)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"trainer": {"resume": "/nonexistent/run"}},
            "trainer.resume: no such run directory: /nonexistent/run",
        ),
        ({"injection": {"name": "osi", "bank_path": "nowhere.jsonl"}}, "injection.bank_path: no such file"),
        (
            {"model": {"name": "pretrained", "path": "/nonexistent/model"}},
            "model.path: no such model directory",
        ),
    ],
    ids=["resume_dir", "bank", "model"],
)
def test_check_inputs_names_what_is_missing(change, message):
    """Files and directories are checked apart from the values (check_inputs), still before any work."""
    cfg = _compose([])
    check_inputs(cfg)  # the defaults read nothing that could be missing
    for section, values in change.items():
        setattr(cfg, section, replace(getattr(cfg, section), **values))
    with pytest.raises(FileNotFoundError, match=message):
        check_inputs(cfg)


# Every setting of the study's experiments against its scripts: tests/config/test_study_parity.py.


# Where each run starts without model.path: the 8k runs from the study's model in the HF cache, RLR from
# and OSI from DeepScaleR-1.5B-Preview (PAPER.md §4, §5); later stages (None) need the previous stage's
# export.
STARTING_MODEL = dict.fromkeys(("rlr_8k", "osi_24k"), "agentica-org/DeepScaleR-1.5B-Preview") | dict.fromkeys(
    ("continue_16k", "continue_24k"), None
)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_study_experiments_start_from_the_study_model(experiment):
    cfg = _compose([f"+experiment={experiment}", "data.train_path=x.jsonl"])
    expected = STARTING_MODEL.get(experiment, "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    assert (cfg.model.name, cfg.model.path) == ("pretrained", expected)
    if expected is None:
        with pytest.raises(ValueError, match=r"model\.path is required"):
            validate(cfg)


def test_default_config_is_the_embedded_task():
    cfg = _compose([])
    validate(cfg)
    assert (cfg.model.name, cfg.data.name, cfg.rollout.backend) == ("tiny", "arithmetic", "hf")
    assert cfg.trainer.prompts_per_step * cfg.rollout.group_size == 256
    assert not cfg.reward.think_format and not cfg.eval.think_format  # its traces always close </think>


def test_long_task_composes_with_its_model_preset():
    cfg = _compose(["data=long_arithmetic", "model=tiny_long"])
    validate(cfg)
    assert (cfg.model.name, cfg.data.name) == ("tiny", "long_arithmetic")
    assert cfg.data.long_difficulty == LongDifficultyConfig()  # the data file restates the defaults
    # Room for every cold start example (the SFT refuses one longer than the model's positions) and for the
    # longest prompt with a staged run's third response limit, 1,536 tokens. Tokens: the characters, the 3
    # markers of a response one token each, its EOS, and the prompt's 3 chat tokens.
    positions = cfg.model.tiny.max_position_embeddings
    examples = teacher_problems(cfg.data.long_difficulty, cfg.cold_start, build_tokenizer())
    assert max(len(p.problem) + 3 + len(p.solution) - 19 + 1 for p in examples) <= positions
    last_stage = _compose([f"+experiment={LONG_STAGES[-1]}", "model.path=/models/x"])
    assert max(len(p.problem) + 3 for p in examples) + last_stage.rollout.max_new_tokens <= positions


def test_long_stages_extend_the_context_as_the_study_does():
    stages = [_compose([f"+experiment={name}", "model.path=/models/x"]) for name in LONG_STAGES]
    limits = [cfg.rollout.max_new_tokens for cfg in stages]
    assert [limit / limits[0] for limit in limits] == [1, 2, 3]  # 8k : 16k : 24k
    assert [cfg.rollout.group_size for cfg in stages] == [8, 16, 16]
    assert [cfg.eval.max_new_tokens for cfg in stages] == limits
    assert all(cfg.data.name == "long_arithmetic" and cfg.rollout.temperature == 0.6 for cfg in stages)
    assert stages[0].model.name == "tiny" and all(cfg.model.name == "pretrained" for cfg in stages[1:])
    for name in LONG_STAGES:
        validate(_compose([f"+experiment={name}", "model.path=/models/x"]))
    with pytest.raises(ValueError, match=r"model\.path is required"):
        policy_path(_compose([f"+experiment={LONG_STAGES[1]}"]))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_study_experiments_grade_with_the_studys_think_rule(experiment):
    """The study's grader gives 0 to a response without </think>, in training and in validation alike."""
    cfg = _compose([f"+experiment={experiment}", "data.train_path=x.jsonl"])
    assert cfg.reward.think_format and cfg.eval.think_format


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rollout": {"group_size": 0}}, "rollout.group_size must be >= 2"),
        ({"rollout": {"group_size": 1}}, r"rollout.group_size must be >= 2 \(group-relative"),
        ({"rollout": {"top_p": 1.5}}, r"rollout.top_p must be in \(0, 1\]"),
        ({"loss": {"clip_low": 1.0}}, r"loss.clip_low must be in \[0, 1\), got 1.0"),
        ({"loss": {"dual_clip": 0.5}}, "loss.dual_clip must be > 1"),
        ({"loss": {"kl_coef": -0.001}}, "loss.kl_coef must be >= 0, got -0.001"),
        ({"trainer": {"grad_clip": 0.0}}, "trainer.grad_clip must be > 0"),
        ({"trainer": {"keep_checkpoints": 0}}, "trainer.keep_checkpoints must be >= 1"),
        (
            {"trainer": {"max_staleness": 1, "rollout_workers": 0}},
            "needs a rollout worker: trainer.rollout_w",
        ),
        (
            {"trainer": {"max_staleness": 1, "remote_rollout_workers": 1}},
            r"trainer.remote_rollout_workers needs trainer.rollout_port: .* --address HOST:PORT",
        ),
        ({"trainer": {"rollout_port": 70000}}, "trainer.rollout_port must be a TCP port"),
        ({"trainer": {"remote_rollout_workers": 1}}, r"remote_rollout_workers needs asynchronous rollouts"),
        (
            {"trainer": {"rollout_workers": 2, "rollout_devices": ["0"]}},
            r"trainer.rollout_devices must be one entry per rollout worker \(2\)",
        ),
        (
            {"trainer": {"rollout_devices": ["0;1"]}},
            r"trainer.rollout_devices must be CUDA device lists .*'0;1'",
        ),
        ({"eval": {"problems": 0}}, "eval.problems must be > 0"),
        ({"eval": {"top_p": 2.0}}, r"eval.top_p must be in \(0, 1\]"),
        ({"regime": {"name": "neg_to_pos", "switch_step": -3}}, "regime.switch_step must be >= 0, got -3"),
        (
            {"regime": {"name": "neg_to_pos", "switch_accuracy": 1.5}},
            r"regime.switch_accuracy must be in \[0, 1\]",
        ),
        ({"cold_start": {"space_prob": 2.0}}, r"cold_start.space_prob must be in \[0, 1\], got 2.0"),
        (
            {"loss": {"objective": Objective.cispo, "clip_low": 1.5}},
            r"loss.clip_low must be in \[0, 1\] with loss.objective=cispo, got 1.5",
        ),
        ({"loss": {"objective": Objective.cispo, "dual_clip": 2.0}}, "loss.objective=cispo has none"),
        (
            {"loss": {"advantage_estimator": AdvantageEstimator.rloo}},
            "loss.advantage_estimator=rloo takes loss.advantage_scale=none",
        ),
        (
            {"loss": {"ratio_level": RatioLevel.sequence, "objective": Objective.cispo, "clip_low": 1.0}},
            "loss.ratio_level=sequence is GSPO's clipped loss; set loss.objective=clipped",
        ),
        (
            {"loss": {"ratio_level": RatioLevel.sequence, "dual_clip": 3.0}},
            "loss.ratio_level=sequence \\(GSPO\\) has none",
        ),
        ({"rollout": {"correction_low": 0.5}}, "rollout.correction_low bounds the mask"),
        ({"rollout": {"correction_mode": CorrectionMode.mask}}, "correction_mode=mask needs a bound"),
        ({"rollout": {"correction_level": CorrectionLevel.sequence}}, "correction_level=sequence needs"),
        (
            {"rollout": {"correction_mode": CorrectionMode.mask, "correction_low": 1.5}},
            r"rollout.correction_low must be in \(0, 1\]",
        ),
    ],
    ids=[
        "group_size_0",
        "group_size_1",
        "top_p",
        "clip_low",
        "dual_clip",
        "kl_coef",
        "grad_clip",
        "keep_checkpoints",
        "rollout_workers",
        "remote_without_port",
        "rollout_port",
        "remote_synchronous",
        "devices_per_worker",
        "devices_list",
        "eval_problems",
        "eval_top_p",
        "switch_step",
        "switch_accuracy",
        "space_prob",
        "cispo_clip_low",
        "cispo_dual_clip",
        "rloo_group_std",
        "gspo_cispo",
        "gspo_dual_clip",
        "correction_low_without_mask",
        "mask_without_bound",
        "sequence_without_bound",
        "correction_low_range",
    ],
)
def test_validate_names_the_bad_value(change, message):
    cfg = _compose([])
    for section, values in change.items():
        setattr(cfg, section, replace(getattr(cfg, section), **values))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        validate(cfg)


@pytest.mark.parametrize(
    ("override", "valid"),
    [
        (
            "loss.aggregation=sum",
            "token_mean, seq_mean_token_mean, seq_mean_token_sum_norm, token_sum, micro_batch_token_mean, "
            "micro_batch_token_sum",
        ),
        ("loss.packed_attention=xformers", "auto, sdpa, varlen, flash"),
        ("loss.backend=cuda", "auto, triton, torch"),
        ("cold_start.schedule=linear", "constant, cosine"),
        ("regime.select_by=sign", "correctness, advantage"),
        ("trainer.mixed_precision=fp16", "auto, bf16, fp32"),
    ],
    ids=lambda value: value.split("=")[0] if "=" in value else "",
)
def test_a_bad_choice_is_refused_at_composition_with_the_valid_values(override, valid):
    with pytest.raises(ConfigCompositionException) as error:
        _compose([override])
    assert f"override {override}" in str(error.value)
    assert f"expected one of [{valid}]" in str(error.value.__cause__)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["rollout.partial_steps=0", "trainer.max_staleness=1"], "rollout.partial_steps must be > 0"),
        (["rollout.partial_steps=64"], r"needs asynchronous rollouts \(trainer.max_staleness >= "),
        (
            ["rollout.partial_steps=64", "trainer.max_staleness=1", "rollout=vllm"],
            "rollout.partial_steps needs rollout=hf",
        ),
        (
            ["rollout.partial_steps=64", "trainer.max_staleness=1", "sampling=dynamic"],
            "rollout.partial_steps needs sampling=static",
        ),
        # max_new_tokens 64, lag 2, one worker: two landings before batch n's step, so at least 32.
        (
            ["rollout.partial_steps=31", "trainer.max_staleness=2"],
            r"rollout.partial_steps must be at least ceil\(rollout.max_new_tokens / 2\) = 32.*lag 2, 1",
        ),
        # Lag 1: batch n's next landing is the request of step n itself, so only its own before it.
        (
            ["rollout.partial_steps=63", "trainer.max_staleness=1"],
            r"at least ceil\(rollout.max_new_tokens / 1\) = 64",
        ),
        # Two workers at lag 2: a worker's next request is made at step n.
        (
            ["rollout.partial_steps=63", "trainer.max_staleness=2", "trainer.rollout_workers=2"],
            r"at least ceil\(rollout.max_new_tokens / 1\) = 64",
        ),
    ],
    ids=["zero", "synchronous", "vllm", "dynamic", "too_few_steps", "lag_1", "two_workers"],
)
def test_partial_rollouts_are_refused_where_they_cannot_land(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate(_compose(overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        ["rollout.partial_steps=64", "trainer.max_staleness=1"],  # every batch ends before the next lands
        ["rollout.partial_steps=32", "trainer.max_staleness=2"],
        ["rollout.partial_steps=32", "trainer.max_staleness=3", "trainer.rollout_workers=2"],
        [
            "rollout.partial_steps=16",
            "trainer.max_staleness=8",
            "trainer.mini_batches=2",
        ],  # lag 4: 4 landings
    ],
)
def test_partial_rollouts_are_accepted_where_every_batch_ends_in_time(overrides):
    validate(_compose(overrides))


def test_dynamic_sampling_with_rollout_workers_needs_one_trainer_rank():
    cfg = TrainConfig()
    cfg.sampling.name, cfg.trainer.max_staleness = Sampling.dynamic, 1
    check_world(cfg, 1)
    with pytest.raises(ValueError, match=r"sampling=dynamic with trainer.max_staleness > 0 needs one"):
        check_world(cfg, 2)
    cfg.trainer.max_staleness = 0
    check_world(cfg, 2)  # the synchronous loop asks every rank round by round
