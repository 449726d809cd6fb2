"""Data and tasks: prompt datasets, the built-in arithmetic task, its tokenizer, prompts, the prompt
sampler and the verifier that grades answers."""
