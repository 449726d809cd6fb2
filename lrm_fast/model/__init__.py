"""Model and FSDP: causal LMs (the built-in tiny Qwen2 and real checkpoints), their SFT cold start, the
optimizer and schedule, attention over packed sequences, and FSDP2 sharding."""
