"""Benchmarks of the gala-rl scripts; each module runs with `python -m benchmark.<module>`."""
