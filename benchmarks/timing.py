"""Timing arms side by side with ``torch.utils.benchmark``.

``Timer.blocked_autorange`` times one statement with the thread count pinned (and CUDA
synchronized), but one arm at a time: on a shared machine, load that comes and goes would land on
whichever arm ran then. So :func:`time_arms` alternates: each round times a short block of every
arm, in a fresh random order, and keeps every block's :class:`Measurement`. :func:`summarize` then
takes, per round, the ratio of an arm to its baseline *of the same round* (the ratio convention of
RESULTS.md), and reports the median ratio over rounds with its interquartile range, next to the
merged measurement's median time.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Mapping
from functools import partial

from torch.utils.benchmark import Compare, Measurement, Timer


def time_arms(
    arms: Mapping[str, Callable[[], object]],
    rounds: int,
    block_seconds: float = 0.05,
    threads: int = 1,
    seed: int = 0,
) -> dict[str, list[Measurement]]:
    """``rounds`` blocks of about ``block_seconds`` of each arm's call, arms alternating."""
    timer = partial(Timer, "call()", label="step", num_threads=threads)
    timers = {name: timer(globals={"call": call}, description=name) for name, call in arms.items()}
    order, shuffle = list(timers), random.Random(seed).shuffle
    measurements: dict[str, list[Measurement]] = {name: [] for name in order}
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            measurements[name].append(timers[name].blocked_autorange(min_run_time=block_seconds))
    return measurements


def summarize(
    measurements: Mapping[str, list[Measurement]], baseline: Mapping[str, str]
) -> dict[str, dict[str, float]]:
    """Per arm: ``ratio`` (median over rounds of its time over its baseline's in that round),
    ``ratio_q1``/``ratio_q3``, ``median_us`` (all blocks merged) and ``rounds``. ``baseline`` maps
    an arm to the arm it is compared with (itself: ratio 1)."""
    rows = {}
    for name, blocks in measurements.items():
        base = measurements[baseline[name]]
        ratios = [a.median / b.median for a, b in zip(blocks, base, strict=True)]
        one_round = len(ratios) < 2  # its quartiles are its value
        quartiles = ratios * 3 if one_round else statistics.quantiles(ratios, method="inclusive")
        rows[name] = {"ratio": statistics.median(ratios), "rounds": len(blocks)}
        rows[name] |= {"ratio_q1": quartiles[0], "ratio_q3": quartiles[2]}
        rows[name]["median_us"] = Measurement.merge(blocks)[0].median * 1e6
    return rows


def print_comparison(measurements: Mapping[str, list[Measurement]]) -> None:
    """torch.utils.benchmark's own table of the merged measurements, for the console."""
    merged = [m for blocks in measurements.values() for m in Measurement.merge(blocks)]
    compare = Compare(merged)
    compare.trim_significant_figures()
    compare.print()
