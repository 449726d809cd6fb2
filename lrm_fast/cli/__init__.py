"""Command-line entry points (Hydra apps); the only modules that see a DictConfig."""
