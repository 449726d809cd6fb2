"""The GPU smoke run's code, at a tiny shape on CPU (gpu_check.sh runs it at Qwen2.5-0.5B's on a GPU)."""

from benchmarks.gpu_smoke import main


def test_gpu_smoke_runs_grpo_steps_on_cpu(one_thread):
    args = "--shape tiny --device cpu --steps 2 --prompts 2 --group-size 4 --prompt-tokens 12"
    results = main([*args.split(), "--response-tokens", "10", "--micro-batch-tokens", "40"])
    assert [r["attention"] for r in results] == ["sdpa", "sdpa"]  # auto resolves to sdpa on CPU
    for result in results:
        assert "error" not in result
        assert result["loss_finite"] and result["micro_batches"] >= 2  # 8 x (12 + <=10) tokens over 40
        assert result["rollout_tokens_per_s"] > 0 and result["update_tokens_per_s"] > 0
