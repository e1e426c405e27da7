"""Benchmarks of lightning-o2nc: ``python -m benchmarks.run_all [--quick]`` writes ``RESULTS.md``."""
