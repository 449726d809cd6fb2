"""Typed configuration: the schemas (one definition of every key), their choices, and their checks.

Nothing here imports Hydra or OmegaConf: lrm_fast/cli registers these dataclasses in Hydra's ConfigStore
and converts what Hydra composes into them once; everything below the entry points gets typed objects.
"""

from lrm_fast.config.evaluate import (
    BenchmarkConfig,
    EvalAppConfig,
    EvalModelConfig,
    EvalProtocol,
    protocol_of,
)
from lrm_fast.config.train import (
    AUTO_RESUME,
    CPU_THREAD_KEYS,
    ColdStartConfig,
    DataConfig,
    DifficultyConfig,
    EvalConfig,
    InjectionConfig,
    LongDifficultyConfig,
    LossConfig,
    ModelConfig,
    RegimeConfig,
    RewardConfig,
    RolloutConfig,
    SamplingConfig,
    TinyModelConfig,
    TrainConfig,
    TrainerConfig,
)
from lrm_fast.config.validation import (
    check_difficulty,
    check_inputs,
    check_long_difficulty,
    check_model_path,
    validate,
    validate_eval,
    validate_protocol,
)

__all__ = [
    "AUTO_RESUME",
    "CPU_THREAD_KEYS",
    "BenchmarkConfig",
    "ColdStartConfig",
    "DataConfig",
    "DifficultyConfig",
    "EvalAppConfig",
    "EvalConfig",
    "EvalModelConfig",
    "EvalProtocol",
    "InjectionConfig",
    "LongDifficultyConfig",
    "LossConfig",
    "ModelConfig",
    "RegimeConfig",
    "RewardConfig",
    "RolloutConfig",
    "SamplingConfig",
    "TinyModelConfig",
    "TrainConfig",
    "TrainerConfig",
    "check_difficulty",
    "check_inputs",
    "check_long_difficulty",
    "check_model_path",
    "protocol_of",
    "validate",
    "validate_eval",
    "validate_protocol",
]
