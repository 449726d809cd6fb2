r"""Multi-round adaptive evaluation (PAPER.md §6): sample, grade, store, re-plan, until the score is precise.

Round 0 draws k samples of every problem (and one greedy response each, when asked). Each later round r
spends a budget fixed in advance, min(samples_per_round, what is left of the budget) x P samples,
allocated by `AdaptiveState.plan` (Neyman allocation with at least one sample per problem, more where
the per-problem accuracy is still uncertain; lrm_fast/evaluation/stats.py). The score is `adaptive_estimate`:
round means weighted by the rounds' shares of the budget, exactly unbiased for the benchmark mean (the
pooled mean c_i/n_i is not, because later counts depend on earlier outcomes). Its interval is a parametric
bootstrap of that estimator: every round's counts redrawn as Binomial(n_ri, p~_i), with p~_i the add-one
smoothed accuracy over all rounds. With a single round this is exactly `eval_stats.bootstrap_ci`.

Everything lives in one JSON file, rewritten atomically after every round (temporary file + os.replace),
so a killed run loses at most the round in flight; a restart reloads the file and continues with the
next round. Round r samples with seed + r and is planned from the stored rounds alone, so a resumed run
draws exactly what an uninterrupted one would (same machine, same batch size).

Simplifications:
- Stopping once the interval is narrower than the target makes the number of rounds depend on the data,
  which breaks exact unbiasedness; the width depends on the outcomes only through sum_i p~_i(1 - p~_i),
  so the effect is second order. target_ci_width=0 keeps the estimator exactly unbiased.
- pass@k and maj@k use round 0 only (k samples of every problem, drawn before any adaptation): exactly
  unbiased, for k up to the first round's k. Per-problem accuracy, uncertain problems and greedy flips
  use every round.
- maj@k votes on the extracted answer with white space removed: equivalent answers written differently
  (1/2 and \frac{1}{2}) are different votes.
- The standard error is the plug-in sqrt(sum_r w_r^2 sum_i p~_i(1-p~_i)/n_ri)/P, smoothed like the
  interval, so it is slightly conservative for problems at 0 or 1.
- Greedy responses come from the backend's own argmax decoding (`RolloutBackend.greedy`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lrm_fast.config import EvalProtocol
from lrm_fast.data.examples import PromptExample
from lrm_fast.data.grader import extract_boxed, grade_batch
from lrm_fast.evaluation.adaptive import adaptive_interval, round_counts, state_of, variance_ratios
from lrm_fast.evaluation.stats import maj_at_k_curve, pass_at_k_curve, uncertain_mask, variance_share
from lrm_fast.evaluation.variance import decompose_variance, effective_samples
from lrm_fast.rollout import RolloutBackend, SamplingParams

RUN_FORMAT = 1
# Settings that decide what is sampled: a resumed run must keep them, or it would mix two evaluations.
FIXED_ON_RESUME = (
    "samples_per_problem",
    "round_samples",
    "temperature",
    "top_p",
    "max_new_tokens",
    "greedy",
    "seed",
    "perturbation",
    "think_format",  # decides the grades: a resumed run must not mix two rules
)
# What a run file written before a key existed did, for the keys above that came later.
BEFORE_KEY = {"think_format": False}


def stored_settings(protocol: EvalProtocol, seed: int, perturbation: dict | None = None) -> dict:
    """The settings stored with a benchmark's rounds (what a resume is checked against); `perturbation`
    describes the block in front of the prompts (lrm_fast/evaluation/perturbation.py), None: clean."""
    extra = {
        "seed": seed,
        "round_samples": protocol.round_samples,
        "total_budget": protocol.total_budget,
        "perturbation": perturbation,
    }
    return {**asdict(protocol), **extra}


# ----------------------------------------------------------------------------------------- the loop


def evaluate(
    backend: RolloutBackend,
    tokenizer,
    examples: list[PromptExample],
    prompts: list[list[int]],
    protocol: EvalProtocol,
    state_path: str | Path | None = None,
    name: str = "heldout",
    log: Callable[[str], None] | None = None,
    *,
    seed: int = 0,
    perturbation: dict | None = None,
) -> dict:
    """Evaluate one benchmark round by round and return its summary (see `summarize`).

    With `state_path`, the run JSON there is loaded (its entry `name` resumed, other entries kept) and
    rewritten after every round. `perturbation` (`Perturbation.record()`) marks an entry whose prompts
    carry a misleading block; it is stored with the settings. The JSON's layout:
    {"format", "benchmarks": {name: entry}, ...} with
    entry = {"settings", "problems": [{"id", "problem", "answer", "answers", "greedy", "samples": [...]}],
    "rounds": [...], "stop_reason", "summary"}.
    """
    if not examples or len(examples) != len(prompts):
        raise ValueError(f"need one prompt per example and at least one, got {len(examples)}, {len(prompts)}")
    state_path = Path(state_path) if state_path is not None else None
    run = load_run(state_path) if state_path is not None and state_path.exists() else {"format": RUN_FORMAT}
    entry = open_entry(
        run,
        name,
        examples,
        stored_settings(protocol, seed, perturbation),
        where=f"{state_path}, benchmark {name!r}",
    )
    while True:
        entry["stop_reason"] = stop_reason(entry, protocol)
        entry["summary"] = summarize(entry, protocol, seed) if entry["rounds"] else None
        if state_path is not None:
            save_run(run, state_path)
        if entry["stop_reason"] is not None:
            return entry["summary"]
        record = run_round(backend, tokenizer, examples, prompts, protocol, seed, entry)
        if log is not None:
            log(
                f"[{name}] round {record['round']}: {record['samples']} samples, score {record['score']:.4f} "
                f"+- {record['standard_error']:.4f}, {100 * protocol.confidence_level:g}% CI "
                f"[{record['ci_low']:.4f}, {record['ci_high']:.4f}] ({record['wall_time_s']:.1f} s)"
            )


def open_entry(run: dict, name: str, examples: list[PromptExample], settings: dict, where: str) -> dict:
    """The run's entry of benchmark `name`: the stored one to resume (checked), or a new one."""
    benchmarks = run.setdefault("benchmarks", {})
    if name in benchmarks:
        check_resumable(benchmarks[name], examples, settings, where)
        benchmarks[name]["settings"] = settings  # limits (rounds, budget, target) may change
    else:
        benchmarks[name] = new_entry(examples, settings)
    return benchmarks[name]


def new_entry(examples: list[PromptExample], settings: dict) -> dict:
    problems = [
        {
            "id": ex.id,
            "problem": ex.problem,
            "answer": ex.answer,
            "answers": list(ex.answers),  # every accepted form, the first being "answer"
            "greedy": None,
            "samples": [],
        }
        for ex in examples
    ]
    return {"settings": settings, "problems": problems, "rounds": [], "stop_reason": None}


def check_resumable(entry: dict, examples: list[PromptExample], settings: dict, where: str) -> None:
    """Refuse to continue stored rounds with other problems or another sampling setup."""
    stored, current = entry["settings"], settings
    for key in FIXED_ON_RESUME:
        used = stored.get(key, BEFORE_KEY.get(key))
        if used != current[key]:
            raise ValueError(
                f"{where}: cannot resume with {key}={current[key]!r}, the stored rounds used "
                f"{used!r} (set resume=false or another output directory to start over)"
            )
    stored_problems = [(p["id"], p.get("answers", [p["answer"]])) for p in entry["problems"]]
    if stored_problems != [(ex.id, list(ex.answers)) for ex in examples]:
        raise ValueError(f"{where}: cannot resume, the stored problems differ from the benchmark's")


def stop_reason(entry: dict, settings: EvalProtocol) -> str | None:
    """Why no further round runs ("max_rounds", "target_ci_width", "budget"), or None to go on."""
    rounds = entry["rounds"]
    if not rounds:
        return None
    if len(rounds) >= settings.max_rounds:
        return "max_rounds"
    if rounds[-1]["ci_high"] - rounds[-1]["ci_low"] < settings.target_ci_width:
        return "target_ci_width"
    if next_round_budget(entry, settings) < len(entry["problems"]):
        return "budget"  # a planned round gives every problem at least one sample
    return None


def next_round_budget(entry: dict, settings: EvalProtocol) -> int:
    """Samples of the next round: fixed by the settings and the round index, never by outcomes."""
    num_problems = len(entry["problems"])
    if not entry["rounds"]:
        return settings.samples_per_problem * num_problems
    spent = sum(record["samples"] for record in entry["rounds"])
    return min(settings.round_samples * num_problems, settings.total_budget * num_problems - spent)


def plan_round(entry: dict, settings: EvalProtocol) -> np.ndarray:
    """Samples per problem for the next round: k each in round 0, then `AdaptiveState.plan`."""
    if not entry["rounds"]:
        return np.full(len(entry["problems"]), settings.samples_per_problem, dtype=np.int64)
    state = state_of(round_counts(entry))
    return state.plan(next_round_budget(entry, settings), settings.uncertain_lo, settings.uncertain_hi)


def run_round(backend, tokenizer, examples, prompts, settings: EvalProtocol, seed: int, entry: dict) -> dict:
    """Sample, grade and store one round (greedy responses too in round 0); returns its record."""
    start = time.perf_counter()
    index = len(entry["rounds"])
    counts = plan_round(entry, settings)
    owners = np.repeat(np.arange(len(prompts)), counts).tolist()  # problem of each sample, grouped
    params = SamplingParams(settings.max_new_tokens, settings.temperature, settings.top_p, seed + index)
    # One prompt per row (group size 1): problems get different numbers of samples in later rounds.
    rollouts = backend.generate([prompts[i] for i in owners], group_size=1, params=params)
    samples = _graded(
        tokenizer,
        [(r.response_ids, r.finished) for r in rollouts],
        [examples[i].answers for i in owners],
        settings,
        round_index=index,
    )
    for i, sample in zip(owners, samples, strict=True):
        entry["problems"][i]["samples"].append(sample)
    if index == 0 and settings.greedy:
        responses = backend.greedy(prompts, settings.max_new_tokens)
        greedy = _graded(tokenizer, responses, [ex.answers for ex in examples], settings)
        for problem, response in zip(entry["problems"], greedy, strict=True):
            problem["greedy"] = response
    interval = adaptive_interval(round_counts(entry), settings.confidence_level, seed=seed)
    record = {
        "round": index,
        "seed": params.seed,
        "samples": len(owners),
        "samples_so_far": sum(r["samples"] for r in entry["rounds"]) + len(owners),
        **interval,
        "wall_time_s": time.perf_counter() - start,
    }
    entry["rounds"].append(record)
    return record


def _graded(
    tokenizer, responses, answers, settings: EvalProtocol, round_index: int | None = None
) -> list[dict]:
    """One JSON record per (response ids, finished) pair: text, extracted answer, correctness, length;
    graded against each response's accepted answers by the protocol's rule (think_format)."""
    texts = tokenizer.batch_decode([ids for ids, _ in responses], skip_special_tokens=True)
    correct = grade_batch(texts, answers, think_format=settings.think_format)
    head = {} if round_index is None else {"round": round_index}
    return [
        {
            **head,
            "text": text if settings.store_text else None,
            "answer": extract_boxed(text, settings.think_format),
            "correct": bool(ok),
            "length": len(ids),
            "finished": bool(finished),
        }
        for text, ok, (ids, finished) in zip(texts, correct, responses, strict=True)
    ]


def summarize(entry: dict, settings: EvalProtocol, seed: int = 0) -> dict:
    """The benchmark's numbers from its stored rounds (all JSON-safe)."""
    rounds = round_counts(entry)
    n, c = state_of(rounds).totals()
    accuracy = c / n
    round0 = [[s for s in p["samples"] if s["round"] == 0] for p in entry["problems"]]
    votes = [[(_vote_key(s["answer"]), s["correct"]) for s in samples] for samples in round0]
    lengths = [s["length"] for p in entry["problems"] for s in p["samples"]]
    return {
        "problems": len(n),
        "samples": int(n.sum()),
        "rounds": len(rounds),
        "stop_reason": entry.get("stop_reason"),
        **adaptive_interval(rounds, settings.confidence_level, seed=seed),
        "level": settings.confidence_level,
        "round0_score": float(np.mean(rounds[0][1] / rounds[0][0])),
        "pass_at_k": pass_at_k_curve(*rounds[0]).tolist(),
        "maj_at_k": maj_at_k_curve(votes).tolist(),
        "uncertain_share": float(
            uncertain_mask(accuracy, settings.uncertain_lo, settings.uncertain_hi).mean()
        ),
        "uncertain_variance_share": variance_share(n, c, settings.uncertain_lo, settings.uncertain_hi),
        **variance_ratios(rounds),
        # Between- and within-question parts of the variance (eval_variance); the within part is that of
        # the adaptive estimator, beside what a uniform spread of the same samples would give.
        "variance_decomposition": decompose_variance(
            n, c, settings.uncertain_lo, settings.uncertain_hi, effective_n=effective_samples(rounds)
        ).as_dict(),
        "mean_length": float(np.mean(lengths)),
        "truncated_share": float(
            np.mean([not s["finished"] for p in entry["problems"] for s in p["samples"]])
        ),
        "greedy": _greedy_summary(entry["problems"], accuracy),
    }


def _vote_key(answer: str | None) -> str | None:
    return None if answer is None else "".join(answer.split())


def _greedy_summary(problems: list[dict], sampled_accuracy: np.ndarray) -> dict | None:
    """Greedy accuracy and the problems where greedy and the majority of samples disagree (flips)."""
    if any(problem["greedy"] is None for problem in problems):
        return None
    greedy = np.array([problem["greedy"]["correct"] for problem in problems])
    return {
        "accuracy": float(greedy.mean()),
        "right_where_sampled_wrong": int(np.sum(greedy & (sampled_accuracy < 0.5))),
        "wrong_where_sampled_right": int(np.sum(~greedy & (sampled_accuracy > 0.5))),
    }


# ---------------------------------------------------------------------------------------- run file


def load_run(path: str | Path) -> dict:
    run = json.loads(Path(path).read_text(encoding="utf-8"))
    if run.get("format") != RUN_FORMAT:
        raise ValueError(f"{path}: not an lrm-fast-eval run file of format {RUN_FORMAT}")
    return run


def save_run(run: dict, path: str | Path) -> None:
    """Write atomically: a reader (or a restart after a kill) sees the previous file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as file:
        json.dump(run, file, indent=1, ensure_ascii=False)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
