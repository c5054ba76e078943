"""Speed and memory benchmarks, run from the repository root as modules, e.g.
``python -m benchmarks.latency --suite real``; results go to ``benchmarks/results/``."""
