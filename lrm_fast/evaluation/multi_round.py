r"""Multi-round adaptive evaluation (PAPER.md §6): sample, grade, store, re-plan, until the score is precise.

Round 0 draws k samples of every problem (and one greedy response each, when asked). Each later round r
spends a budget fixed in advance, min(samples_per_round, what is left of the budget) x P samples,
allocated by `AdaptiveState.plan` (Neyman allocation with at least one sample per problem, more where
the per-problem accuracy is still uncertain; lrm_fast/eval_stats.py). The score is `adaptive_estimate`:
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
- Greedy responses come from an argmax loop of this module over the HF backend's model (SamplingParams
  has no greedy mode); a backend without a transformers model cannot run greedy=True.
- One process: problems are not sharded across ranks.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache

from lrm_fast.data import PromptExample
from lrm_fast.eval_stats import AdaptiveState, maj_at_k_curve, pass_at_k_curve, uncertain_mask, variance_share
from lrm_fast.eval_variance import decompose_variance, effective_samples
from lrm_fast.grader import extract_boxed, grade_batch
from lrm_fast.rollout import RolloutBackend, SamplingParams
from lrm_fast.rollout.hf import _left_pad

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
)


@dataclass(frozen=True)
class EvalSettings:
    """How one benchmark is evaluated (the typed form of `lrm-fast-eval`'s config, also for the trainer)."""

    samples_per_problem: int = 16  # k of round 0
    temperature: float = 0.6  # the study's evaluation protocol (PAPER.md §6)
    top_p: float = 0.95
    max_new_tokens: int = 32768
    greedy: bool = True  # one greedy response per problem in round 0 (not counted in the budget)
    uncertain_lo: float = 0.1
    uncertain_hi: float = 0.9
    level: float = 0.95  # confidence level of the interval
    max_rounds: int = 1
    target_ci_width: float = 0.0  # stop once ci_high - ci_low < this; 0: run every round
    budget: int | None = None  # mean samples per problem over all rounds; None: k x max_rounds
    samples_per_round: int | None = None  # mean new samples per problem in each later round; None: k
    seed: int = 0  # round r samples with seed + r
    store_text: bool = True  # keep response texts in the JSON

    @property
    def round_samples(self) -> int:
        return self.samples_per_round or self.samples_per_problem

    @property
    def total_budget(self) -> int:
        return self.budget or self.samples_per_problem * self.max_rounds

    def as_dict(self) -> dict:
        return {**asdict(self), "round_samples": self.round_samples, "total_budget": self.total_budget}


# ----------------------------------------------------------------------------------------- the loop


def evaluate(
    backend: RolloutBackend,
    tokenizer,
    examples: list[PromptExample],
    prompts: list[list[int]],
    settings: EvalSettings,
    state_path: str | Path | None = None,
    name: str = "heldout",
    log: Callable[[str], None] | None = None,
) -> dict:
    """Evaluate one benchmark round by round and return its summary (see `summarize`).

    With `state_path`, the run JSON there is loaded (its entry `name` resumed, other entries kept) and
    rewritten after every round. The JSON's layout: {"format", "benchmarks": {name: entry}, ...} with
    entry = {"settings", "problems": [{"id", "problem", "answer", "greedy", "samples": [...]}],
    "rounds": [...], "stop_reason", "summary"}.
    """
    if not examples or len(examples) != len(prompts):
        raise ValueError(f"need one prompt per example and at least one, got {len(examples)}, {len(prompts)}")
    state_path = Path(state_path) if state_path is not None else None
    run = load_run(state_path) if state_path is not None and state_path.exists() else {"format": RUN_FORMAT}
    entry = open_entry(run, name, examples, settings, where=f"{state_path}, benchmark {name!r}")
    while True:
        entry["stop_reason"] = stop_reason(entry, settings)
        entry["summary"] = summarize(entry, settings) if entry["rounds"] else None
        if state_path is not None:
            save_run(run, state_path)
        if entry["stop_reason"] is not None:
            return entry["summary"]
        record = run_round(backend, tokenizer, examples, prompts, settings, entry)
        if log is not None:
            log(
                f"[{name}] round {record['round']}: {record['samples']} samples, score {record['score']:.4f} "
                f"+- {record['standard_error']:.4f}, {100 * settings.level:g}% CI "
                f"[{record['ci_low']:.4f}, {record['ci_high']:.4f}] ({record['wall_time_s']:.1f} s)"
            )


def open_entry(
    run: dict, name: str, examples: list[PromptExample], settings: EvalSettings, where: str
) -> dict:
    """The run's entry of benchmark `name`: the stored one to resume (checked), or a new one."""
    benchmarks = run.setdefault("benchmarks", {})
    if name in benchmarks:
        check_resumable(benchmarks[name], examples, settings, where)
        benchmarks[name]["settings"] = settings.as_dict()  # limits (rounds, budget, target) may change
    else:
        benchmarks[name] = new_entry(examples, settings)
    return benchmarks[name]


def new_entry(examples: list[PromptExample], settings: EvalSettings) -> dict:
    problems = [
        {"id": ex.id, "problem": ex.problem, "answer": ex.answer, "greedy": None, "samples": []}
        for ex in examples
    ]
    return {"settings": settings.as_dict(), "problems": problems, "rounds": [], "stop_reason": None}


def check_resumable(entry: dict, examples: list[PromptExample], settings: EvalSettings, where: str) -> None:
    """Refuse to continue stored rounds with other problems or another sampling setup."""
    stored, current = entry["settings"], settings.as_dict()
    for key in FIXED_ON_RESUME:
        if stored.get(key) != current[key]:
            raise ValueError(
                f"{where}: cannot resume with {key}={current[key]!r}, the stored rounds used "
                f"{stored.get(key)!r} (set resume=false or another output directory to start over)"
            )
    stored_problems = [(p["id"], p["answer"]) for p in entry["problems"]]
    if stored_problems != [(ex.id, ex.answer) for ex in examples]:
        raise ValueError(f"{where}: cannot resume, the stored problems differ from the benchmark's")


def stop_reason(entry: dict, settings: EvalSettings) -> str | None:
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


def next_round_budget(entry: dict, settings: EvalSettings) -> int:
    """Samples of the next round: fixed by the settings and the round index, never by outcomes."""
    num_problems = len(entry["problems"])
    if not entry["rounds"]:
        return settings.samples_per_problem * num_problems
    spent = sum(record["samples"] for record in entry["rounds"])
    return min(settings.round_samples * num_problems, settings.total_budget * num_problems - spent)


def plan_round(entry: dict, settings: EvalSettings) -> np.ndarray:
    """Samples per problem for the next round: k each in round 0, then `AdaptiveState.plan`."""
    if not entry["rounds"]:
        return np.full(len(entry["problems"]), settings.samples_per_problem, dtype=np.int64)
    state = adaptive_state(entry)
    return state.plan(next_round_budget(entry, settings), settings.uncertain_lo, settings.uncertain_hi)


def run_round(backend, tokenizer, examples, prompts, settings: EvalSettings, entry: dict) -> dict:
    """Sample, grade and store one round (greedy responses too in round 0); returns its record."""
    start = time.perf_counter()
    index = len(entry["rounds"])
    counts = plan_round(entry, settings)
    owners = np.repeat(np.arange(len(prompts)), counts).tolist()  # problem of each sample, grouped
    params = SamplingParams(
        settings.max_new_tokens, settings.temperature, settings.top_p, settings.seed + index
    )
    # One prompt per row (group size 1): problems get different numbers of samples in later rounds.
    rollouts = backend.generate([prompts[i] for i in owners], group_size=1, params=params)
    samples = _graded(
        tokenizer,
        [(r.response_ids, r.finished) for r in rollouts],
        [examples[i].answer for i in owners],
        settings.store_text,
        round_index=index,
    )
    for i, sample in zip(owners, samples, strict=True):
        entry["problems"][i]["samples"].append(sample)
    if index == 0 and settings.greedy:
        responses = greedy_decode(backend, prompts, settings.max_new_tokens)
        greedy = _graded(tokenizer, responses, [ex.answer for ex in examples], settings.store_text)
        for problem, response in zip(entry["problems"], greedy, strict=True):
            problem["greedy"] = response
    interval = adaptive_interval(round_counts(entry), settings.level, seed=settings.seed)
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


def _graded(tokenizer, responses, answers, store_text: bool, round_index: int | None = None) -> list[dict]:
    """One JSON record per (response ids, finished) pair: text, extracted answer, correctness, length."""
    texts = tokenizer.batch_decode([ids for ids, _ in responses], skip_special_tokens=True)
    correct = grade_batch(texts, answers)
    head = {} if round_index is None else {"round": round_index}
    return [
        {
            **head,
            "text": text if store_text else None,
            "answer": extract_boxed(text),
            "correct": bool(ok),
            "length": len(ids),
            "finished": bool(finished),
        }
        for text, ok, (ids, finished) in zip(texts, correct, responses, strict=True)
    ]


# ------------------------------------------------------------------------------------------- greedy


def greedy_decode(backend, prompts: list[list[int]], max_new_tokens: int) -> list[tuple[list[int], bool]]:
    """(response ids up to and including the first EOS, finished) of the argmax decoding of each prompt.

    SamplingParams has no greedy mode (temperature must be > 0, and a tiny temperature is not argmax:
    ties and underflow), so this is its own loop over the HF backend's model, cache and EOS ids; a backend
    with its own ``greedy`` method (vLLM: temperature 0 is argmax there) is asked directly.
    """
    if hasattr(backend, "greedy"):
        return backend.greedy(prompts, max_new_tokens)
    model = getattr(backend, "model", None)
    if model is None:
        raise TypeError(
            f"greedy decoding needs a backend with a transformers model, got {type(backend).__name__}"
        )
    device = next(model.parameters()).device
    chunk = getattr(backend, "max_batch_size", None) or max(len(prompts), 1)
    was_training = model.training
    model.eval()
    try:
        responses = []
        for start in range(0, len(prompts), chunk):
            rows = prompts[start : start + chunk]
            responses += _greedy_chunk(
                model, rows, backend.eos_token_ids, backend.pad_token_id, max_new_tokens, device
            )
        return responses
    finally:
        model.train(was_training)


@torch.inference_mode()
def _greedy_chunk(model, rows, eos_token_ids, pad_token_id, max_new_tokens, device):
    """Argmax decoding of left-padded rows with a KV cache; finished rows leave the batch (as in hf.py)."""
    input_ids, attention_mask = _left_pad(rows, pad_token_id, device)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding shifts positions
    eos = torch.tensor(eos_token_ids, device=device)
    responses, finished = [[] for _ in rows], [False] * len(rows)
    active = torch.arange(len(rows), device=device)
    cache = DynamicCache()
    for t in range(max_new_tokens):
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        token = logits.argmax(dim=-1)
        ended = torch.isin(token, eos)
        for row, token_id, done in zip(active.tolist(), token.tolist(), ended.tolist(), strict=True):
            responses[row].append(token_id)
            finished[row] = done
        keep = (~ended).nonzero().squeeze(1)
        if keep.numel() == 0 or t + 1 == max_new_tokens:
            break
        if ended.any():
            cache.batch_select_indices(keep)  # finished rows leave the batch
            active, token, attention_mask, position_ids = (
                x[keep] for x in (active, token, attention_mask, position_ids)
            )
        input_ids = token[:, None]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
        position_ids = position_ids[:, -1:] + 1
    return list(zip(responses, finished, strict=True))


# --------------------------------------------------------------------------------------- statistics


def round_counts(entry: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """(n_r, c_r) per round: samples and correct samples of every problem, from the stored samples."""
    num_rounds = 1 + max((s["round"] for p in entry["problems"] for s in p["samples"]), default=-1)
    n = np.zeros((num_rounds, len(entry["problems"])), dtype=np.int64)
    c = np.zeros_like(n)
    for i, problem in enumerate(entry["problems"]):
        for sample in problem["samples"]:
            n[sample["round"], i] += 1
            c[sample["round"], i] += sample["correct"]
    return list(zip(n, c, strict=True))


def adaptive_state(entry: dict) -> AdaptiveState:
    return _state(round_counts(entry))


def _state(rounds) -> AdaptiveState:
    state = AdaptiveState()
    for n_r, c_r in rounds:
        state.add(n_r, c_r)
    return state


def _adaptive_variance(state: AdaptiveState, p: np.ndarray) -> float:
    """Variance of P x the adaptive score for per-problem accuracies p: sum_r w_r^2 sum_i p_i(1-p_i)/n_ri,
    with w_r the rounds' budget shares."""
    n, _ = state.totals()
    weights = np.array([n_r.sum() for n_r, _ in state.rounds], dtype=float) / n.sum()
    rounds = zip(weights, state.rounds, strict=True)
    return float(sum(w**2 * np.sum(p * (1 - p) / n_r) for w, (n_r, _) in rounds))


def adaptive_interval(rounds, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict:
    """score (`adaptive_estimate`), its plug-in standard error and a basic parametric bootstrap interval

        [score - q_{(1+level)/2}(D), score - q_{(1-level)/2}(D)],  D = est(c*) - mean_i(p~_i),
        c*_ri ~ Binomial(n_ri, p~_i),  p~_i = (c_i + 1) / (n_i + 2) over all rounds,

    D centred on the resampling mean (every round's mean has expectation p~_i under the resampling).
    The draws are those of `eval_stats.bootstrap_ci`, so one round gives exactly its interval."""
    state = _state(rounds)
    n, c = state.totals()
    p = (c + 1) / (n + 2)
    variance = _adaptive_variance(state, p)
    budgets = np.array([n_r.sum() for n_r, _ in state.rounds], dtype=float)
    rng = np.random.default_rng(seed)
    resampled = sum(
        w * (rng.binomial(n_r, p, size=(resamples, len(p))) / n_r).mean(axis=1)
        for w, (n_r, _) in zip(budgets / budgets.sum(), state.rounds, strict=True)
    )
    q_low, q_high = np.quantile(resampled - p.mean(), [(1 - level) / 2, (1 + level) / 2])
    score = state.estimate()
    return {
        "score": score,
        "standard_error": float(np.sqrt(variance) / len(p)),
        "ci_low": max(0.0, score - float(q_high)),
        "ci_high": min(1.0, score - float(q_low)),
    }


def variance_ratios(rounds) -> dict:
    """Estimated variance of the adaptive score over that of round 0 alone and over that of a uniform
    allocation of the same total budget (below 1: the adaptive rounds helped), None if both are 0.

    All three use the same per-sample variances p^_i(1-p^_i) of the final accuracies p^_i = c_i/n_i:
    the smoothed p~_i of the interval would credit problems solved every time with variance they show no
    sign of, and so hide the gain of sampling them less (on the tiny task's cold start, 300 problems:
    1.03 smoothed, 0.83 unsmoothed; simulating from those accuracies gives 0.84).
    """
    state = _state(rounds)
    n, c = state.totals()
    s2 = (c / n) * (1 - c / n)
    adaptive = _adaptive_variance(state, c / n)
    one_round = np.sum(s2 / state.rounds[0][0])
    uniform = np.sum(s2) / (n.sum() / len(n))
    if uniform == 0:
        return {"variance_ratio_vs_one_round": None, "variance_ratio_vs_uniform": None}
    return {
        "variance_ratio_vs_one_round": float(adaptive / one_round),
        "variance_ratio_vs_uniform": float(adaptive / uniform),
    }


def summarize(entry: dict, settings: EvalSettings) -> dict:
    """The benchmark's numbers from its stored rounds (all JSON-safe)."""
    rounds = round_counts(entry)
    n, c = _state(rounds).totals()
    accuracy = c / n
    round0 = [[s for s in p["samples"] if s["round"] == 0] for p in entry["problems"]]
    votes = [[(_vote_key(s["answer"]), s["correct"]) for s in samples] for samples in round0]
    lengths = [s["length"] for p in entry["problems"] for s in p["samples"]]
    return {
        "problems": len(n),
        "samples": int(n.sum()),
        "rounds": len(rounds),
        "stop_reason": entry.get("stop_reason"),
        **adaptive_interval(rounds, settings.level, seed=settings.seed),
        "level": settings.level,
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
