"""The benchmarks of lightning-o2nc: one harness (``python -m benchmarks``) and experiments of one
shape, whose JSON results under ``benchmarks/results/`` render RESULTS.md."""
