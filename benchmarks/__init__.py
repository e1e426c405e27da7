"""The project's measurements of speed, memory and accuracy, arms side by side: raw results as JSON
in ``benchmarks/results/``, rendered into ``RESULTS.md`` (``python -m benchmarks.run_all``)."""
