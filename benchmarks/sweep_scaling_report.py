"""The sweep section of RESULTS.md, from ``benchmarks/results/sweep_scaling.json``.

Kept apart from :mod:`benchmarks.sweep_scaling`, which runs the sweeps: this module changes when
the section's tables or targets change, and rendering needs neither the runs nor their processes.
:class:`SweepTiming` is the record of one measured sweep that both read.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from .report import markdown_table

__all__ = ["SweepTiming", "targets", "to_markdown"]


@dataclass
class SweepTiming:
    """One measured sweep: its finished trials and how long they took."""

    label: str
    workers: int
    trials: int  # finished for good, not counting skipped duplicates
    distinct: int  # distinct parameter sets among those
    duplicates_skipped: int  # trials that drew a configuration the study held (not trained)
    span_s: float  # first trial's start to last trial's end
    wall_s: float  # the processes' whole life
    epochs: int
    best: float | None
    trial_s: list[float] = field(default_factory=list)  # each completed trial's duration
    best_curve: list[tuple[float, float]] = field(default_factory=list)  # (s since start, best)

    @property
    def trials_per_hour(self) -> float:
        return 3600.0 * self.trials / self.span_s

    @property
    def distinct_per_hour(self) -> float:
        return 3600.0 * self.distinct / self.span_s

    @property
    def median_trial_s(self) -> float:
        return statistics.median(self.trial_s) if self.trial_s else float("nan")

    def best_within(self, seconds: float) -> float | None:
        """The best value among the trials completed within ``seconds`` of the first start."""
        reached = [best for at, best in self.best_curve if at <= seconds + 1e-6]
        return reached[-1] if reached else None


def _timing(raw: dict[str, Any]) -> SweepTiming:
    raw = dict(raw, best_curve=[tuple(point) for point in raw.get("best_curve", [])])
    return SweepTiming(**raw)


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(target, measured, verdict)`` rows for the table at the top of RESULTS.md."""
    overhead, (one, two) = (
        results["overhead"],
        (_timing(results["workers"][k]) for k in ("one", "two")),
    )
    ratio = overhead["ratio_median"]
    return [
        (
            "o2nc-sweep trial ≤ 1.5× a bare Optuna + Lightning trial (median)",
            f"{ratio:.2f}× ({overhead['ratio_min']:.2f}–{overhead['ratio_max']:.2f}×)",
            "met" if ratio <= 1.5 else "**missed**",
        ),
        (
            "2 workers never evaluate a configuration twice",
            f"{two.distinct} distinct of {two.trials} (1 worker: {one.distinct} of {one.trials})",
            "met" if two.distinct == two.trials and one.distinct == one.trials else "**missed**",
        ),
    ]


def to_markdown(results: dict[str, Any]) -> str:
    """The sweep section of ``RESULTS.md``, from the raw results alone."""
    overhead = results["overhead"]
    one, two = (_timing(results["workers"][k]) for k in ("one", "two"))
    pruned, unpruned = (_timing(results["pruning"][k]) for k in ("pruned", "unpruned"))
    saved = 1 - pruned.epochs / unpruned.epochs if unpruned.epochs else float("nan")
    horizon = min(one.span_s, two.span_s)
    dense = overhead.get("dense_log_every_n_steps")  # absent from results before the arm
    rounds = [
        (
            *(i, f"{r['o2nc_median_s']:.3f}", f"{r['bare_median_s']:.3f}", f"{r['ratio']:.2f}×"),
            *((f"{r['o2nc_dense_median_s']:.3f}", f"{r['dense_ratio']:.2f}×") if dense else ()),
            "-" if r.get("load_1min") is None else f"{r['load_1min']:.1f}",
        )
        for i, r in enumerate(overhead["rounds"])
    ]
    dense_columns = [f"every {dense} steps (s)", "ratio"] if dense else []
    dense_note = (
        [
            f"- At the train config's `log_every_n_steps: {dense}` instead of the demo sweep's one "
            f"point per epoch: **{overhead['dense_ratio_median']:.2f}×**, the cost of the "
            "additional logging steps (training metrics through `self.log`, the monitor's "
            "statistics, their TensorBoard events)."
        ]
        if dense
        else []
    )
    separately = overhead.get("machine")  # re-measured alone with --only-overhead
    remeasured = (
        [
            f"- Measured on its own (`{overhead['command']}`, "
            f"{separately.get('date (UTC)', '?')} UTC, commit {separately.get('commit', '?')}); "
            "the workers and pruning parts below come from the full run.",
        ]
        if separately
        else []
    )
    sweeps = [
        (
            *(t.label, t.workers, t.trials, t.distinct, f"{t.span_s:.1f}", f"{t.wall_s:.1f}"),
            *(f"{t.trials_per_hour:.0f}", f"{t.distinct_per_hour:.0f}", t.epochs, _value(t.best)),
        )
        for t in (one, two, pruned, unpruned)
    ]
    return "\n".join(
        [
            f"The digits demo sweep on {results['cpus']} CPU cores, one torch thread per process, "
            "SQLite storage. Times come from the trials' own start and end stamps in the study.",
            "",
            f"### Per-trial overhead: o2nc-sweep against a bare Optuna + Lightning loop "
            f"({overhead['trials']} trials × {overhead['epochs']} epochs, no pruning)",
            "",
            markdown_table(
                [
                    *("round", "o2nc-sweep median (s)", "bare median (s)", "ratio"),
                    *dense_columns,
                    "load (1 min)",
                ],
                rounds,
            ),
            "",
            *remeasured,
            f"- Ratio of the median trial times: **{overhead['ratio_median']:.2f}×** (rounds "
            f"{overhead['ratio_min']:.2f}–{overhead['ratio_max']:.2f}×; target ≤ 1.5×), with "
            "full monitoring, x̄ validation and TensorBoard on, as the demo sweep runs them. The "
            "bare loop is the same MLP, digits split and batch size with torch SGD and no logger.",
            *dense_note,
            "",
            "### Workers and pruning",
            "",
            markdown_table(
                [
                    *("sweep", "workers", "trials", "distinct", "trial span (s)", "wall (s)"),
                    *("trials/hour", "distinct/hour", "epochs", "best val/acc_avg"),
                ],
                sweeps,
            ),
            "",
            f"- 2 workers against 1: **{two.distinct_per_hour / one.distinct_per_hour:.2f}×** "
            f"distinct configurations per hour ({two.trials_per_hour / one.trials_per_hour:.2f}× "
            f"trials per hour); best value within the first {horizon:.1f} s: "
            f"{_value(two.best_within(horizon))} with 2 workers, {_value(one.best_within(horizon))} "
            "with 1.",
            f"- Median pruning: **{saved:.0%}** of the epochs saved ({pruned.epochs} against "
            f"{unpruned.epochs}); best value {_value(pruned.best)} with pruning, "
            f"{_value(unpruned.best)} without.",
        ]
    )
