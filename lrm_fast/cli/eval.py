"""`lrm-fast-eval`: multi-round adaptive evaluation of a checkpoint (conf/evaluate.yaml; `--cfg job`).

Parse, load the benchmarks (a bad file fails before the model is loaded), load the model, evaluate each
benchmark round by round into OUTPUT_DIR/results.json (rewritten after every round), print the summary
table, draw the plots. Rerunning with the same output_dir (or hydra.run.dir) resumes a killed evaluation:
finished rounds are kept, the next one starts. With a perturbation (`perturbation.*`, robustness) every
benchmark NAME is evaluated clean, then as NAME+attack with a misleading block before every prompt, each
its own entry of results.json, and a second table prints the paired drop.

    lrm-fast-eval model.path=outputs/DATE/TIME/final_model
    lrm-fast-eval model.path=/models/r1-distill-1.5b model.dtype=bfloat16 benchmarks=study
    lrm-fast-eval model.path=... benchmarks=file benchmarks.0.name=aime24 benchmarks.0.path=/data/aime24.jsonl
    lrm-fast-eval model.path=outputs/DATE/TIME/final_model perturbation.name=arithmetic_add_one
    lrm-fast-eval model.path=... benchmarks=study perturbation.name=add_one   (study's p1)
"""

import sys
from contextlib import ExitStack
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lrm_fast.cli.configs import register_configs, typed, write_hydra_record
from lrm_fast.cli.launch import input_errors
from lrm_fast.config import BenchmarkConfig, EvalAppConfig, EvalModelConfig, protocol_of, validate_eval
from lrm_fast.config.choices import Device, RolloutEngine
from lrm_fast.runtime.lock import directory_lock

register_configs()


@hydra.main(version_base="1.3", config_path="pkg://lrm_fast.conf", config_name="evaluate")
def main(dict_cfg: DictConfig) -> dict:
    hydra_dir = Path(HydraConfig.get().runtime.output_dir)
    holds = ExitStack()
    with input_errors("lrm-fast-eval", hydra_dir, holds):
        cfg: EvalAppConfig = typed(dict_cfg)
        validate_eval(cfg)
        check_shadowed_overrides(cfg, HydraConfig.get().overrides.task)
        # Heavy imports (torch, transformers, math-verify) once the config is known to be valid.
        from lrm_fast.evaluation.benchmarks import load_benchmark
        from lrm_fast.evaluation.perturbation import resolve_perturbation

        perturbation = resolve_perturbation(cfg.perturbation)
        benchmarks = [load_benchmark(spec) for spec in cfg.benchmarks]  # a bad file fails before the model
        out_dir = Path(cfg.output_dir or hydra_dir).expanduser()
        holds.enter_context(directory_lock(out_dir, "lrm-fast-eval"))
        write_hydra_record(out_dir, dict_cfg)
    with holds:
        config = OmegaConf.to_container(dict_cfg, resolve=True)
        return evaluate_all(cfg, benchmarks, perturbation, out_dir, config)


def evaluate_all(cfg: EvalAppConfig, benchmarks, perturbation, out_dir: Path, config: dict) -> dict:
    """Load the model, evaluate each benchmark (clean, then perturbed when a perturbation is set) into
    OUT_DIR/results.json, print the tables, draw the plots."""
    from lrm_fast.evaluation.multi_round import evaluate, load_run
    from lrm_fast.evaluation.report import format_table, write_plots
    from lrm_fast.runtime import configure_runtime

    protocols = [benchmark_protocol(cfg, spec) for spec in cfg.benchmarks]
    for benchmark, protocol in zip(benchmarks, protocols, strict=True):
        print(f"[{benchmark.name}] {len(benchmark.examples)} problems, {describe(protocol)}")
    if perturbation is not None:
        print(f"perturbation: {perturbation.source} before every prompt, entries NAME+{perturbation.label}")
    results = out_dir / "results.json"
    configure_runtime(cfg.num_threads)
    backend, tokenizer = load_backend(cfg)
    try:  # a block the model cannot read fails here, before anything is written
        variants = prompt_variants(cfg, backend, tokenizer, benchmarks, protocols, perturbation)
    except ValueError as error:
        sys.exit(f"lrm-fast-eval: error: {error}")
    start_run_file(results, cfg, config)  # once the model loaded
    summaries = {}
    for name, examples, prompts, protocol, record in variants:
        summaries[name] = evaluate(
            backend,
            tokenizer,
            examples,
            prompts,
            protocol,
            results,
            name,
            print,
            seed=cfg.seed,
            perturbation=record,
        )
    print(format_table(summaries))
    if perturbation is not None:
        print_robustness(results, cfg.confidence_level)
    for path in write_plots(load_run(results), out_dir):
        print(f"wrote {path}")
    print(f"wrote {results}")
    return summaries


def prompt_variants(cfg, backend, tokenizer, benchmarks, protocols, perturbation) -> list[tuple]:
    """(entry name, examples, prompts, protocol, perturbation record) of every evaluation, in order: each
    benchmark clean, then with the perturbation's block when one is set. Both variants of a benchmark use
    the same protocol and seed, so they differ in the prompts alone (and are paired by problem)."""
    from lrm_fast.data.prompts import encode_prompts
    from lrm_fast.evaluation.perturbation import check_encodable, check_fits

    if perturbation is not None:
        check_encodable(perturbation, tokenizer)
    variants = []
    for benchmark, protocol in zip(benchmarks, protocols, strict=True):
        examples, template = benchmark.examples, benchmark.template
        variants.append(
            (benchmark.name, examples, encode_prompts(examples, tokenizer, template), protocol, None)
        )
        if perturbation is None:
            continue
        name = perturbation.name_of(benchmark.name)
        prompts = encode_prompts(examples, tokenizer, perturbation.template(template))
        check_fits(prompts, protocol.max_new_tokens, model_context(cfg, backend), name)
        variants.append((name, examples, prompts, protocol, perturbation.record()))
    return variants


def print_robustness(results: Path, level: float) -> None:
    """Print the clean/perturbed table and keep its numbers in results.json under "robustness"."""
    from lrm_fast.evaluation.multi_round import load_run, save_run
    from lrm_fast.evaluation.perturbation import robustness
    from lrm_fast.evaluation.report import format_robustness

    run = load_run(results)
    run["robustness"] = robustness(run, level)
    save_run(run, results)
    if run["robustness"]:
        print(format_robustness(run["robustness"]))


def model_context(cfg: EvalAppConfig, backend) -> int | None:
    """Positions the model can attend over: vLLM's max_model_len, or the HF model's position limit."""
    if cfg.backend == RolloutEngine.vllm:
        return cfg.max_model_len  # null: the engine refuses a too-long prompt itself
    return getattr(backend.model.config, "max_position_embeddings", None)


# Global keys a benchmark entry may set for itself (BenchmarkConfig), shadowing the global value.
PER_BENCHMARK_KEYS = ("samples_per_problem", "max_new_tokens")


def check_shadowed_overrides(cfg: EvalAppConfig, overrides) -> None:
    """Refuse a global override that no benchmark would use: every entry sets its own value of that key
    (conf/benchmarks/arithmetic.yaml's built-in entry sets both), so it would change nothing."""
    given = {override.split("=", 1)[0].lstrip("+~") for override in overrides}
    for key in PER_BENCHMARK_KEYS:
        own = [getattr(spec, key) for spec in cfg.benchmarks]
        if key in given and all(value is not None for value in own):
            entries = ", ".join(f"benchmarks.{i}.{key}={value}" for i, value in enumerate(own))
            raise ValueError(
                f"{key}={getattr(cfg, key)} has no effect: every benchmark sets its own ({entries}); "
                f"override benchmarks.N.{key} instead"
            )


def describe(protocol) -> str:
    """The effective settings of one benchmark, as printed at the start."""
    budget = f"budget {protocol.total_budget}/problem" if protocol.max_rounds > 1 else "one round"
    return (
        f"k={protocol.samples_per_problem}, max_new_tokens={protocol.max_new_tokens}, "
        f"temperature={protocol.temperature}, top_p={protocol.top_p}, greedy={protocol.greedy}, "
        f"max_rounds={protocol.max_rounds}, target_ci_width={protocol.target_ci_width}, {budget}, "
        f"think_format={protocol.think_format}"
    )


def start_run_file(results: Path, cfg: EvalAppConfig, config: dict) -> None:
    """Create results.json, or check that the one there (to resume) evaluated the same model."""
    from lrm_fast.evaluation.multi_round import RUN_FORMAT, load_run, save_run

    if results.exists() and not cfg.resume:
        results.unlink()  # resume=false: start over
    if results.exists():
        run = load_run(results)
        if run.get("model") != cfg.model.path:
            raise ValueError(
                f"{results} holds an evaluation of model {run.get('model')!r}, not {cfg.model.path!r}: "
                "set resume=false or another output_dir"
            )
    else:
        run = {"format": RUN_FORMAT, "model": cfg.model.path, "benchmarks": {}}
    run["config"] = config  # the latest invocation's (limits may grow between resumes)
    save_run(run, results)


def load_backend(cfg: EvalAppConfig):
    """(rollout backend, tokenizer) of the checkpoint: our decode loop on it, or a vLLM engine."""
    if cfg.backend == RolloutEngine.vllm:
        return load_vllm_backend(cfg)
    from lrm_fast.rollout.hf import HFRolloutBackend

    model, tokenizer = load_checkpoint(cfg.model)
    return HFRolloutBackend(model, tokenizer, max_batch_size=cfg.generation_batch_size), tokenizer


def load_checkpoint(model_cfg: EvalModelConfig):
    """(model in eval mode on its device, tokenizer) of the checkpoint."""
    import torch

    from lrm_fast.data.tokenizer import load_tokenizer
    from lrm_fast.model.causal_lm import load_model

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "auto": "auto"}[model_cfg.dtype.value]
    device = model_cfg.device.value
    if model_cfg.device == Device.auto:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    attention = model_cfg.attn_implementation.value
    model = load_model(model_cfg.path, dtype=dtype, attn_implementation=attention)
    return model.to(device).eval(), load_tokenizer(model_cfg.path)


def load_vllm_backend(cfg: EvalAppConfig):
    """(vLLM rollout backend, tokenizer) of the checkpoint: a standalone engine, no trainer beside it."""
    from lrm_fast.config import RolloutConfig
    from lrm_fast.data.tokenizer import load_tokenizer
    from lrm_fast.rollout.vllm import VLLMRolloutBackend

    tokenizer = load_tokenizer(cfg.model.path)
    settings = RolloutConfig(
        backend=RolloutEngine.vllm,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        tensor_parallel_size=cfg.tensor_parallel_size,
        max_model_len=cfg.max_model_len,
        dtype=cfg.model.dtype.value,
    )
    backend = VLLMRolloutBackend(cfg.model.path, tokenizer, settings, seed=cfg.seed, standalone=True)
    return backend, tokenizer


def benchmark_protocol(cfg: EvalAppConfig, spec: BenchmarkConfig):
    """The protocol of one benchmark: its own k and length where it sets them, else the global ones."""
    return protocol_of(
        cfg,
        samples_per_problem=spec.samples_per_problem or cfg.samples_per_problem,
        max_new_tokens=spec.max_new_tokens or cfg.max_new_tokens,
    )


if __name__ == "__main__":
    main()
