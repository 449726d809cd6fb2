"""`lrm-fast-eval`: benchmark files, the adaptive round loop, resuming, the summary and the CLI end to end.

The round-loop tests use a scripted backend whose problem i is answered correctly with a known
probability p_i (a mix of certain and uncertain problems), so allocations and scores have something
to act on; greedy decoding and the CLI run a tiny randomly initialised Qwen2.
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from lrm_fast.config import (
    BenchmarkConfig,
    DataConfig,
    EvalAppConfig,
    EvalModelConfig,
    EvalProtocol,
    TinyModelConfig,
    validate_eval,
)
from lrm_fast.data.examples import Columns, PromptExample
from lrm_fast.data.grader import grade
from lrm_fast.data.sources import load_examples
from lrm_fast.data.tokenizer import build_tokenizer
from lrm_fast.evaluation.adaptive import adaptive_interval, round_counts
from lrm_fast.evaluation.benchmarks import load_benchmark, load_benchmark_file
from lrm_fast.evaluation.multi_round import evaluate, new_entry, stored_settings, summarize
from lrm_fast.evaluation.stats import AdaptiveState, adaptive_estimate, bootstrap_ci, score_standard_error
from lrm_fast.evaluation.variance import paired_comparison, problem_results
from lrm_fast.model.causal_lm import build_model, tiny_qwen2_config
from lrm_fast.rollout import Rollout
from lrm_fast.rollout.hf import HFRolloutBackend


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------- benchmarks


def test_load_benchmark_file_with_multiple_choice(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"id": "q1", "problem": "1+1?", "answer": 2},
            {"problem": "Pick the prime.", "options": ["4", "7", "9"], "answer": "B"},
            {"problem": "Largest?", "options": {"A": "1", "B": "3", "C": "2"}, "answer": "(B)"},
        ],
    )
    examples, multiple_choice = load_benchmark_file(path)
    assert multiple_choice
    assert examples[0] == PromptExample(id="q1", problem="1+1?", answer="2")
    assert examples[1].problem == "Pick the prime.\n\n(A) 4\n(B) 7\n(C) 9"
    assert examples[1].answer == "(B) 7" and examples[1].id == "1"
    assert examples[2].answer == "(B) 3"
    # The gold form lets the grader accept the letter and the option's text, nothing else.
    assert grade("\\boxed{B}", examples[1].answer) and grade("\\boxed{7}", examples[1].answer)
    assert not grade("\\boxed{C}", examples[1].answer)
    spec = BenchmarkConfig(name="mc", path=str(path), problems=2)
    benchmark = load_benchmark(spec)
    assert len(benchmark.examples) == 2 and "letter of the correct option" in benchmark.template


def test_load_benchmark_file_with_custom_keys_and_builtin(tmp_path):
    path = write_jsonl(tmp_path / "aime.jsonl", [{"question": "x", "final": "\\frac{1}{2}", "uid": 9}])
    columns = Columns(problem="question", answer="final", id="uid")
    examples, multiple_choice = load_benchmark_file(path, columns)
    assert examples == [PromptExample(id="9", problem="x", answer="\\frac{1}{2}")] and not multiple_choice
    builtin = load_benchmark(BenchmarkConfig(name="arithmetic", path="builtin:arithmetic", problems=5))
    assert len(builtin.examples) == 5 and builtin.template == "{problem}"
    assert all(example.id.startswith("arith-") for example in builtin.examples)
    long = load_benchmark(BenchmarkConfig(name="long", path="builtin:long_arithmetic", problems=5))
    assert len(long.examples) == 5 and long.template == "{problem}"
    # The problems a training run on the long task evaluates, at its default settings.
    trained = load_examples(DataConfig(name="long_arithmetic", train_problems=0), num_heldout=5)[1]
    assert long.examples == trained


MALFORMED = {
    "invalid_json": ('{"problem": "a", "answer": "1"}\n{"problem": "b",\n', r"line 2: invalid JSON"),
    "missing_answer": (
        '{"problem": "a", "answer": "1"}\n\n{"problem": "b"}\n',
        r"line 3: no value in column 'answer'",
    ),
    "letter_out_of_range": (
        '{"problem": "a", "options": ["x", "y"], "answer": "C"}\n',
        r"line 1: column 'answer' must be an option letter A-B \(the row has 2 options\)",
    ),
    "options_not_a_list": (
        '{"problem": "a", "options": "xy", "answer": "A"}\n',
        r"line 1: column 'options' must",
    ),
    "too_many_options": (
        '{"problem": "a", "options": ["1", "2", "3", "4", "5", "6"], "answer": "A"}\n',
        r"line 1: column 'options' must hold 2 to 5 options",
    ),
}


@pytest.mark.parametrize(("text", "message"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_benchmark_line_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "bench.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"bench\.jsonl, {message}"):
        load_benchmark_file(path)


BAD_CONFIGS = {
    "temperature": (lambda c: replace(c, temperature=0.0), "temperature"),
    "top_p": (lambda c: replace(c, top_p=1.5), "top_p"),
    "uncertain": (lambda c: replace(c, uncertain_lo=0.9, uncertain_hi=0.1), "uncertain_lo/uncertain_hi"),
    "max_rounds": (lambda c: replace(c, max_rounds=0), "max_rounds"),
    "budget": (lambda c: replace(c, budget=2), "budget"),
    "builtin": (
        lambda c: replace(c, benchmarks=[BenchmarkConfig("x", "builtin:nope")]),
        r"benchmarks\[0\].path",
    ),
    "suffix": (lambda c: replace(c, benchmarks=[BenchmarkConfig("x", "a.csv")]), r"benchmarks\[0\].path"),
    "duplicate": (lambda c: replace(c, benchmarks=[c.benchmarks[0]] * 2), "distinct names"),
    "k": (
        lambda c: replace(c, benchmarks=[replace(c.benchmarks[0], samples_per_problem=0)]),
        r"benchmarks\[0\].samples_per_problem",
    ),
}


@pytest.mark.parametrize(("change", "named"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_eval_config_names_the_key(change, named):
    cfg = EvalAppConfig(model=EvalModelConfig(path="/models/x"))
    validate_eval(cfg)
    with pytest.raises(ValueError, match=named):
        validate_eval(change(cfg))


# ------------------------------------------------------------------------------ scripted round loop


class ScriptedBackend:
    """Problem i is answered correctly with probability true_p[i]; draws depend only on (seed, row)."""

    def __init__(self, tokenizer, examples, true_p):
        self.tokenizer = tokenizer
        self.by_prompt = {
            (i,): (example.answer, p) for i, (example, p) in enumerate(zip(examples, true_p, strict=True))
        }
        self.calls = 0

    def generate(self, prompts, group_size, params):
        self.calls += 1
        rng = np.random.default_rng(params.seed)
        rollouts = []
        for prompt in prompts:
            answer, p = self.by_prompt[tuple(prompt)]
            for _ in range(group_size):
                boxed = answer if rng.random() < p else str(int(answer) + 1)
                ids = self.tokenizer.encode(f"<think>1</think>\\boxed{{{boxed}}}", add_special_tokens=False)
                ids.append(self.tokenizer.eos_token_id)
                rollouts.append(Rollout(list(prompt), ids, [0.0] * len(ids), finished=True))
        return rollouts


# 8 certain problems (never or always solved) and 8 uncertain ones.
TRUE_P = [0.0] * 4 + [1.0] * 4 + [0.5, 0.5, 0.3, 0.7, 0.4, 0.6, 0.5, 0.5]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture
def scripted(tokenizer):
    examples = [PromptExample(id=f"p{i}", problem=str(i), answer=str(10 + i)) for i in range(len(TRUE_P))]
    prompts = [[i] for i in range(len(TRUE_P))]
    return ScriptedBackend(tokenizer, examples, TRUE_P), examples, prompts


SETTINGS = EvalProtocol(samples_per_problem=4, max_new_tokens=16, greedy=False, max_rounds=3)


def test_adaptive_rounds_spend_more_on_uncertain_problems(tokenizer, scripted, tmp_path):
    backend, examples, prompts = scripted
    summary = evaluate(backend, tokenizer, examples, prompts, SETTINGS, tmp_path / "run.json", name="toy")
    entry = json.loads((tmp_path / "run.json").read_text())["benchmarks"]["toy"]
    rounds = round_counts(entry)
    assert [int(n_r.sum()) for n_r, _ in rounds] == [64, 64, 64]  # k x P every round, fixed in advance
    assert all((n_r >= 1).all() for n_r, _ in rounds)  # every problem in every round: unbiased weights
    later = sum(n_r for n_r, _ in rounds[1:])
    assert later[8:].mean() > later[:8].mean()  # Neyman: uncertain problems get the larger share
    assert summary["score"] == pytest.approx(adaptive_estimate(rounds))
    assert summary["samples"] == sum(len(p["samples"]) for p in entry["problems"]) == 192
    assert summary["stop_reason"] == "max_rounds" and summary["rounds"] == 3
    assert entry["rounds"][-1]["samples_so_far"] == 192
    assert len(summary["pass_at_k"]) == len(summary["maj_at_k"]) == 4  # round 0's k
    assert summary["ci_low"] <= summary["score"] <= summary["ci_high"]
    assert summary["variance_ratio_vs_uniform"] < 1 and summary["variance_ratio_vs_one_round"] < 1 / 2


def test_adaptive_stops_at_the_target_width_or_the_budget(tokenizer, scripted):
    backend, examples, prompts = scripted
    wide = replace(SETTINGS, target_ci_width=1.0)
    assert evaluate(backend, tokenizer, examples, prompts, wide)["stop_reason"] == "target_ci_width"
    small = replace(SETTINGS, max_rounds=5, budget=5)  # k=4 in round 0 leaves one sample per problem
    summary = evaluate(backend, tokenizer, examples, prompts, small)
    assert (summary["rounds"], summary["samples"], summary["stop_reason"]) == (2, 80, "budget")


def _without_times(entry):
    return [{k: v for k, v in record.items() if k != "wall_time_s"} for record in entry["rounds"]]


def test_resume_keeps_finished_rounds_and_matches_an_uninterrupted_run(tokenizer, scripted, tmp_path):
    backend, examples, prompts = scripted
    evaluate(backend, tokenizer, examples, prompts, SETTINGS, tmp_path / "full.json", name="toy")
    full = json.loads((tmp_path / "full.json").read_text())["benchmarks"]["toy"]

    # A run killed after its first round: what it had written is a one-round run file.
    path = tmp_path / "resumed.json"
    evaluate(backend, tokenizer, examples, prompts, replace(SETTINGS, max_rounds=1), path, name="toy")
    first = json.loads(path.read_text())["benchmarks"]["toy"]
    calls = backend.calls
    evaluate(backend, tokenizer, examples, prompts, SETTINGS, path, name="toy")
    resumed = json.loads(path.read_text())["benchmarks"]["toy"]
    assert backend.calls == calls + 2  # only the two missing rounds were sampled
    for before, after in zip(first["problems"], resumed["problems"], strict=True):
        round0 = [s for s in after["samples"] if s["round"] == 0]
        assert json.dumps(round0) == json.dumps(before["samples"])  # byte for byte
    assert json.dumps(resumed["rounds"][0]) == json.dumps(first["rounds"][0])
    assert [p["samples"] for p in resumed["problems"]] == [p["samples"] for p in full["problems"]]
    assert _without_times(resumed) == _without_times(full)

    evaluate(backend, tokenizer, examples, prompts, SETTINGS, path, name="toy")  # finished: nothing to do
    assert backend.calls == calls + 2


def test_resume_refuses_another_sampling_setup(tokenizer, scripted, tmp_path):
    backend, examples, prompts = scripted
    path = tmp_path / "run.json"
    evaluate(backend, tokenizer, examples, prompts, replace(SETTINGS, max_rounds=1), path)
    with pytest.raises(ValueError, match=r"cannot resume with temperature=1\.0"):
        evaluate(backend, tokenizer, examples, prompts, replace(SETTINGS, temperature=1.0), path)
    with pytest.raises(ValueError, match="stored problems differ"):
        evaluate(backend, tokenizer, examples[:-1], prompts[:-1], SETTINGS, path)


def test_adaptive_interval_of_one_round_is_the_eval_stats_bootstrap():
    n, c = np.array([4, 4, 4, 8]), np.array([0, 2, 4, 3])
    interval = adaptive_interval([(n, c)], level=0.9, seed=5)
    assert (interval["ci_low"], interval["ci_high"]) == bootstrap_ci(n, c, level=0.9, seed=5)
    assert interval["standard_error"] == pytest.approx(score_standard_error(n, c, smoothed=True))
    assert interval["score"] == pytest.approx(np.mean(c / n))


def test_adaptive_interval_covers_the_true_score_in_simulated_runs():
    # An AIME-sized benchmark with certain and uncertain problems, 3 adaptive rounds of 4 per problem.
    rng = np.random.default_rng(0)
    true_p = np.concatenate([np.zeros(10), np.ones(5), rng.uniform(0.05, 0.95, 15)])
    covered, trials = 0, 300
    for _ in range(trials):
        state = AdaptiveState()
        state.add(np.full(30, 4), rng.binomial(4, true_p))
        for _ in range(2):
            n_r = state.plan(4 * 30)
            state.add(n_r, rng.binomial(n_r, true_p))
        interval = adaptive_interval(state.rounds, resamples=500, seed=int(rng.integers(1 << 30)))
        covered += interval["ci_low"] <= true_p.mean() <= interval["ci_high"]
    # Nominal 0.95; the smoothed variance makes it conservative with certain problems (about 0.98 here).
    assert 0.90 <= covered / trials <= 0.995


def test_uncertain_share_and_greedy_flips_in_the_summary(tokenizer):
    examples = [PromptExample(id=str(i), problem=str(i), answer="1") for i in range(4)]
    entry = new_entry(examples, stored_settings(EvalProtocol(samples_per_problem=4), seed=0))
    per_problem = [[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 1], [0, 1, 0, 0]]  # accuracy 1, 0, 0.75, 0.25
    greedy = [True, True, False, True]  # right where sampled wrong: 1 and 3; wrong where right: 2
    for problem, outcomes, greedy_ok in zip(entry["problems"], per_problem, greedy, strict=True):
        problem["samples"] = [
            {"round": 0, "answer": "1" if ok else "2", "correct": bool(ok), "length": 5, "finished": True}
            for ok in outcomes
        ]
        problem["greedy"] = {"answer": "1", "correct": greedy_ok, "length": 5, "finished": True}
    summary = summarize(entry, EvalProtocol(samples_per_problem=4))
    assert summary["uncertain_share"] == 0.5
    assert summary["uncertain_variance_share"] == 1.0  # solved-or-not problems add no within-variance
    assert summary["greedy"] == {
        "accuracy": 0.75,
        "right_where_sampled_wrong": 2,
        "wrong_where_sampled_right": 1,
    }
    assert summary["maj_at_k"][-1] == 0.5 and summary["pass_at_k"][-1] == 0.75


# ---------------------------------------------------------------------------------- tiny real model


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer):
    config = tiny_qwen2_config(
        len(tokenizer),
        TinyModelConfig(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    path = tmp_path_factory.mktemp("tiny_model")
    build_model(config, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_greedy_matches_transformers_generate(tiny_model_dir, tokenizer, one_thread):
    from lrm_fast.model.causal_lm import load_model

    model = load_model(str(tiny_model_dir))
    backend = HFRolloutBackend(model, tokenizer, max_batch_size=3)
    prompts = [tokenizer.encode(text) for text in ("1+2", "12*3-4", "5", "7-1+30*2")]
    responses = backend.greedy(prompts, max_new_tokens=10)
    for prompt, (ids, finished) in zip(prompts, responses, strict=True):
        expected = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=10,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )[0, len(prompt) :].tolist()
        end = (
            expected.index(tokenizer.eos_token_id) + 1
            if tokenizer.eos_token_id in expected
            else len(expected)
        )
        assert ids == expected[:end]
        assert finished == (tokenizer.eos_token_id in expected)


# ------------------------------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # Benchmark files are read through `datasets`: its cache in a temporary folder, never the network.
    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HYDRA_FULL_ERROR": "1",
        "HF_DATASETS_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
    }


QUICK = ["benchmarks.0.problems=16", "benchmarks.0.samples_per_problem=2", "benchmarks.0.max_new_tokens=12"]


def _eval_command(model_dir, out_dir, *args):
    return [
        sys.executable,
        "-m",
        "lrm_fast.cli.eval",
        f"model.path={model_dir}",
        f"output_dir={out_dir}",
        f"hydra.run.dir={out_dir}/hydra",
        "generation_batch_size=64",
        *args,
    ]


def test_eval_cli_end_to_end_writes_json_table_and_plots(tiny_model_dir, env, tmp_path):
    bench = write_jsonl(
        tmp_path / "mini.jsonl", [{"problem": "1+1", "answer": 2}, {"problem": "3*3", "answer": 9}]
    )
    # A suite of one's own: a benchmarks/ option in a config folder added to Hydra's search path.
    suite = tmp_path / "conf" / "benchmarks" / "mini.yaml"
    suite.parent.mkdir(parents=True)
    suite.write_text(
        "# @package _global_\nbenchmarks:\n"
        "  - {name: arithmetic, path: 'builtin:arithmetic', problems: 16, samples_per_problem: 2,"
        " max_new_tokens: 12}\n"
        f"  - {{name: mini, path: '{bench}', template: '{{problem}}', max_new_tokens: 8}}\n"
    )
    command = _eval_command(
        tiny_model_dir,
        tmp_path / "out",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        "benchmarks=mini",
        "samples_per_problem=3",
        "max_rounds=2",
    )
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # Each benchmark's effective settings first: its own k and length where it sets them, else the global.
    assert "[arithmetic] 16 problems, k=2, max_new_tokens=12," in result.stdout
    assert "[mini] 2 problems, k=3, max_new_tokens=8," in result.stdout
    run = json.loads((tmp_path / "out" / "results.json").read_text())
    assert run["model"] == str(tiny_model_dir)
    table = result.stdout[result.stdout.index("benchmark  ") :]
    for name, problems, k in (("arithmetic", 16, 2), ("mini", 2, 3)):
        entry = run["benchmarks"][name]
        summary = entry["summary"]
        stored = sum(len(problem["samples"]) for problem in entry["problems"])
        assert summary["samples"] == stored == entry["rounds"][-1]["samples_so_far"] == 2 * k * problems
        assert [r["round"] for r in entry["rounds"]] == [0, 1] and summary["stop_reason"] == "max_rounds"
        assert all(p["greedy"] is not None for p in entry["problems"])
        assert any(line.split()[:4] == [name, str(problems), str(stored), "2"] for line in table.splitlines())
    for png in ("score_vs_rounds.png", "per_problem_accuracy.png", "pass_at_k.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_cli_bad_benchmark_file_fails_before_loading_the_model(env, tmp_path):
    bench = tmp_path / "aime.jsonl"
    bench.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b"}\n', encoding="utf-8")
    command = _eval_command(
        tmp_path / "no_model",
        tmp_path / "out",
        "benchmarks=file",
        "benchmarks.0.name=aime",
        f"benchmarks.0.path={bench}",
    )
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"{bench}, line 2: no value in column 'answer'" in result.stderr


@pytest.mark.parametrize("key", ["samples_per_problem", "max_new_tokens"])
def test_eval_cli_refuses_a_global_override_every_benchmark_shadows(env, tmp_path, key):
    """The built-in benchmark entry sets its own k and length: a global override would change nothing."""
    command = _eval_command(tmp_path / "no_model", tmp_path / "out", f"{key}=8")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"lrm-fast-eval: error: {key}=8 has no effect: every benchmark sets its own")
    assert f"benchmarks.0.{key}=" in line and f"override benchmarks.N.{key} instead" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_eval_cli_resumes_after_sigkill_like_an_uninterrupted_run(tiny_model_dir, env, tmp_path):
    settings = [
        "benchmarks.0.problems=64",
        "benchmarks.0.samples_per_problem=4",
        "benchmarks.0.max_new_tokens=32",
        "max_rounds=5",
        "target_ci_width=0",
    ]
    reference = subprocess.run(
        _eval_command(tiny_model_dir, tmp_path / "reference", *settings),
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "killed"
    process = subprocess.Popen(
        _eval_command(tiny_model_dir, out, *settings),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline and not _rounds_done(out / "results.json"):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = json.loads((out / "results.json").read_text())["benchmarks"]["arithmetic"]
    assert 1 <= len(killed["rounds"]) < 5 and killed["stop_reason"] is None  # killed mid-run

    resumed = subprocess.run(
        _eval_command(tiny_model_dir, out, *settings), env=env, capture_output=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    entry = json.loads((out / "results.json").read_text())["benchmarks"]["arithmetic"]
    expected = json.loads((tmp_path / "reference" / "results.json").read_text())["benchmarks"]["arithmetic"]
    assert entry["rounds"][: len(killed["rounds"])] == killed["rounds"]  # finished rounds kept as written
    assert _without_times(entry) == _without_times(expected)
    assert [p["samples"] for p in entry["problems"]] == [p["samples"] for p in expected["problems"]]


def _rounds_done(path) -> int:
    try:
        return len(json.loads(path.read_text())["benchmarks"]["arithmetic"]["rounds"])
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return 0


def test_eval_cli_with_the_builtin_attack_prints_the_paired_table(tiny_model_dir, env, tmp_path):
    command = _eval_command(
        tiny_model_dir, tmp_path / "out", *QUICK, "max_rounds=1", "perturbation.name=arithmetic_add_one"
    )
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((tmp_path / "out" / "results.json").read_text())
    clean, attacked = run["benchmarks"]["arithmetic"], run["benchmarks"]["arithmetic+attack"]
    assert clean["settings"]["perturbation"] is None
    assert attacked["settings"]["perturbation"]["source"] == "arithmetic_add_one x 4"
    assert [p["id"] for p in attacked["problems"]] == [p["id"] for p in clean["problems"]]
    # Both entries follow the same protocol: the table has a row for each.
    table = result.stdout[result.stdout.index("benchmark  ") :]
    for name in ("arithmetic", "arithmetic+attack"):
        assert any(line.split()[:4] == [name, "16", "32", "1"] for line in table.splitlines())
    # The paired section: perturbed - clean on the stored per-problem counts, as eval-compare computes it.
    expected = paired_comparison(*(problem_results(entry) for entry in (clean, attacked)))
    section = result.stdout[result.stdout.index("robustness: perturbed (arithmetic_add_one x 4") :]
    row = next(line for line in section.splitlines() if line.startswith("arithmetic "))
    assert row.split()[1:5] == [
        "16",
        f"{100 * expected.score_a:.2f}",
        f"{100 * expected.score_b:.2f}",
        f"{100 * expected.difference:+.2f}",
    ]
    assert run["robustness"]["arithmetic"]["ci_low"] == pytest.approx(expected.ci_low)
