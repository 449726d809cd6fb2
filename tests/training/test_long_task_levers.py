"""The length levers on the built-in long task: a short run in which truncation masking, DAPO's soft
overlong penalty and the repetition reward each fire on at least 1% of the responses, as logged."""

from inprocess import quick_config, train

from lrm_fast.config.choices import DataSource, Truncated

# A cold start of 30 steps on the long task: it has the format but not the counting, so it runs on past the
# short window, repeating steps and counters, which is what the three levers are there for.
LONG = {
    "data.name": DataSource.long_arithmetic,
    "model.tiny.max_position_embeddings": 512,
    "cold_start.steps": 30,
    "cold_start.max_response_tokens": 150,
    "cold_start.lr": 3e-3,
    "rollout.max_new_tokens": 96,
    "eval.max_new_tokens": 96,
    "trainer.prompts_per_step": 4,
    "trainer.steps": 2,
}
# The study's repetition reward (-2) and mask rule, on single words: a 96-token window holds about 14 words
# of this task, too few for the study's 40-grams (20 lines), and in a correct response no word repeats
# (each step and each counter is new), so a repeated word is a repeated step or a stuck counter. DAPO's
# buffer: a fifth of the window, as its 4,096 of 20,480.
LEVERS = {
    "reward.repetition_penalty": -2.0,
    "reward.repetition_ngram": 1,
    "reward.truncated": Truncated.mask,
    "reward.overlong_buffer": 19,
}


def test_truncation_overlong_and_repetition_each_fire_on_the_long_task(cold_start_cache, tmp_path):
    run = train(quick_config(cold_start_cache, {**LONG, **LEVERS}), tmp_path / "run")
    rows = [row for row in run.rows if "loss/policy" in row]
    assert len(rows) == 2
    fired = {
        key: sum(row[key] for row in rows) / len(rows)
        for key in (
            "length/truncated_ratio",
            "reward/truncation_masked",
            "reward/overlong_penalised",
            "reward/repetition_penalised",
        )
    }
    assert all(share >= 0.01 for share in fired.values()), fired
    # Masking takes only truncated responses, and every truncated response is in the overlong buffer.
    assert fired["reward/truncation_masked"] <= fired["length/truncated_ratio"]
    assert fired["reward/overlong_penalised"] >= fired["length/truncated_ratio"]
