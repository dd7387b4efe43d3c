"""Configuration: the model, its parsing from YAML, presets and ``check --explain``."""
