"""The throughput section of RESULTS.md, from ``benchmarks/results/throughput.json``.

Kept apart from :mod:`benchmarks.throughput` so that rendering needs neither torch nor Lightning.
The file holds ``config`` (:class:`benchmarks.throughput.ThroughputConfig` as a dict, the training
hyper-parameters resolved from ``lightning_o2nc/configs/train``) and either the raw ``samples_per_second`` and
``ratios`` (arm or ratio name -> one value per repetition) or, for a result converted from an
older RESULTS.md, only their ``summary``.
"""

from __future__ import annotations

import statistics
from typing import Any

from .report import markdown_table


def summary(result: dict[str, Any]) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """Per arm (median, mean, std) samples/s and per ratio (median, min, max).

    Computed from the raw per-repetition values, or read from ``summary`` in a result that kept
    only those (the one converted from an earlier RESULTS.md).
    """
    if "samples_per_second" not in result:
        stored = result["summary"]
        return (
            {k: tuple(v) for k, v in stored["arms"].items()},
            {k: tuple(v) for k, v in stored["ratios"].items()},
        )
    arms_ = {
        name: (
            statistics.median(values),
            statistics.fmean(values),
            statistics.stdev(values) if len(values) > 1 else None,
        )
        for name, values in result["samples_per_second"].items()
    }
    ratios = {
        name: (statistics.median(values), min(values), max(values))
        for name, values in result["ratios"].items()
    }
    return arms_, ratios


def targets(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """O2NC / each baseline ≥ 0.99 (median of the paired ratios)."""
    _, ratios = summary(result)
    return [
        (
            f"{name} ≥ 0.99",
            f"{median:.3f} (range {low:.3f}–{high:.3f})",
            "met" if median >= 0.99 else "**missed**",
        )
        for name, (median, low, high) in ratios.items()
        if name.startswith("O2NC / ")
    ]


def to_markdown(result: dict[str, Any]) -> str:
    config = result["config"]
    model = (
        f"SmallCNN(width={config['width']})"
        if config["backbone"] == "small_cnn"
        else config["backbone"]
    )
    arm_summary, ratio_summary = summary(result)
    rows = [
        (name, f"{median:.0f}", f"{mean:.0f} ± {std:.0f}" if std is not None else f"{mean:.0f}")
        for name, (median, mean, std) in arm_summary.items()
    ]
    ratio_rows = [
        (
            name,
            f"{median:.3f}",
            f"{low:.3f} – {high:.3f}",
            "met" if median >= 0.99 else "**missed**",
        )
        for name, (median, low, high) in ratio_summary.items()
    ]
    return "\n".join(
        [
            f"{model} on {config['dataset']}, batch {config['batch_size']}, "
            f"{config['accelerator']} ({config.get('threads') or 'default'} torch thread(s)); "
            f"each run times {config['batches']} training batches after "
            f"{config['warmup_batches']} warm-up batches; {config['repeats']} interleaved repetitions "
            "per arm (seed = repetition, equal across arms).",
            "",
            markdown_table(["arm", "median samples/s", "mean ± std"], rows),
            "",
            markdown_table(
                ["ratio (paired per repetition)", "median", "range", "target ≥ 0.99"], ratio_rows
            ),
            *(
                [
                    "",
                    "A missed ratio whose range straddles 1 is run-to-run noise of the machine "
                    "(the optimizer step is a small part of a training step, see the step "
                    "overhead section for the step alone); the spread is shown so that it can be "
                    "judged.",
                ]
                if any("missed" in row[-1] for row in ratio_rows)
                else []
            ),
        ]
    )
