"""Benchmarks: `distill bench` (`run`, with `setup` and `memory`) and the CPU timings of `python -m distill.bench.cpu`."""
