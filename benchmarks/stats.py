"""The numbers and tables every experiment's Markdown shares: means over seeds, Welch's test of
two arms, and GitHub tables."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells are formatted with ``str``."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` (sample std, ddof=1) of ``values * scale``."""
    scaled = [v * scale for v in values]
    if len(scaled) == 1:
        return f"{scaled[0]:.{digits}f}"
    return f"{statistics.fmean(scaled):.{digits}f} ± {statistics.stdev(scaled):.{digits}f}"


def standard_error_of_difference(a: Sequence[float], b: Sequence[float]) -> float:
    """Standard error of mean(a) - mean(b) (Welch): sqrt(var_a / n_a + var_b / n_b)."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    return math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided Welch t-test of mean(a) - mean(b): (t, p); NaN when the test is undefined."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2 or (statistics.variance(a) == 0 and statistics.variance(b) == 0):
        return math.nan, math.nan
    test = stats.ttest_ind(list(a), list(b), equal_var=False)
    return float(test.statistic), float(test.pvalue)


def difference_text(
    a: Sequence[float], b: Sequence[float], scale: float = 100, digits: int = 2
) -> tuple[str, str]:
    """``("+0.12 ± 0.34", "t = 0.35, p = 0.734")``: mean(a) - mean(b) times ``scale``."""
    diff = scale * (statistics.fmean(a) - statistics.fmean(b))
    error = scale * standard_error_of_difference(a, b)
    t, p = welch(a, b)
    shown = f"{p:.3f}" if not p < 0.001 else f"{p:.1e}"  # NaN: "nan"
    return f"{diff:+.{digits}f} ± {error:.{digits}f}", f"t = {t:.2f}, p = {shown}"


def paired_difference(
    a: Sequence[float | None], b: Sequence[float | None], scale: float = 100, digits: int = 2
) -> str:
    """``"+0.12 ± 0.05"``: mean ± standard error of a - b over the pairs (seeds) where both are
    finite, times ``scale``; "—" when there is none."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if None not in (x, y)]
    diffs = [scale * (x - y) for x, y in pairs if math.isfinite(x - y)]
    error = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else math.nan
    return f"{statistics.fmean(diffs):+.{digits}f} ± {error:.{digits}f}" if diffs else "—"
