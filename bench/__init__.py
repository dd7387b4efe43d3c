"""The benchmark harness: authproxy against a direct connection and nginx (see run.py)."""
