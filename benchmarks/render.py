"""RESULTS.md, rendered from ``benchmarks/results/<name>.json`` alone, one section per experiment.

Nothing is measured and nothing is read back from Markdown. A section is the experiment's own
``render`` of its result, then its command, duration and figures; a missing result names its
command, and a failing renderer says so in its section only. Every section's targets make one table
at the top, every result's environment a list at the bottom."""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path

from .experiments import every
from .harness import RESULTS_DIR, RESULTS_PATH, UNIFORM_SCALING, Experiment, Result, read_result
from .stats import markdown_table

INTRO = (
    "Rendered by `python -m benchmarks render` from the raw results in `benchmarks/results/*.json`, "
    "which `python -m benchmarks run NAME` writes (each section names its command; `python -m "
    "benchmarks list` lists them). Nothing here is typed by hand."
)


def _unweighted_uniform_note(result: Result) -> str:
    """A warning for a result whose uniform arm ran before uniform scaling had its weight."""
    if result.get("uniform_scaling") == UNIFORM_SCALING or "uniform" not in json.dumps(result):
        return ""
    return (
        "> **Measured before uniform scaling gained the authors' importance weight.** The "
        "uniform (U(0, 2)) figures below are of the unweighted variant, which nobody proposed; "
        '`scaling="uniform"` now multiplies the next gradient by 2 − s. The rerun replaces them.'
    )


def render_section(
    experiment: Experiment, results_dir: Path, output: Path, result: Result | None = None
) -> tuple[str, list[tuple[str, str, str, str]]]:
    """The Markdown of one section and its rows of the targets table (``result``: when read)."""
    result = result or read_result(experiment.name, results_dir)
    if result is None:
        return f"**Not run yet.** `{experiment.how_to_run}` writes `{experiment.name}.json`.", []
    try:
        body = experiment.render(result)
        targets = experiment.targets(result) if experiment.targets else []
    except Exception as error:  # one broken renderer must not hide the other sections
        traceback.print_exc()
        body, targets = f"**Could not render** `{experiment.name}.json`: `{error!r}`.", []
    meta = f"Command: `{result['command']}`" if result.get("command") else ""
    if result.get("seconds") is not None:
        meta += f" (the invocation that wrote it: {result['seconds'] / 60:.1f} min)"
    if result.get("command", "").split(" run ")[0] != "python -m benchmarks":
        meta += f"; with this harness: `{experiment.how_to_run}`"
    folder = Path(os.path.relpath(results_dir, output.parent))  # figure links from RESULTS.md
    figures = [f"![{Path(name).stem}]({folder / name})" for name in result.get("figures", [])]
    parts = [_unweighted_uniform_note(result), body, meta, *figures]
    rows = [(experiment.title, *row) for row in targets]
    return "\n\n".join(part for part in parts if part), rows


def render(results_dir: Path = RESULTS_DIR, output: Path = RESULTS_PATH) -> str:
    """Write ``output`` from every experiment's JSON in ``results_dir``; return the text."""
    sections, targets, machines = [], [], []
    for number, experiment in enumerate(every(), start=1):
        result = read_result(experiment.name, results_dir) or {}
        text, rows = render_section(experiment, results_dir, output, result)
        sections += [f"## {number}. {experiment.title}", text]
        targets += rows
        env = result.get("env") or result.get("machine")  # "machine": results of the old scripts
        if env:
            items = "\n".join(f"- **{key}**: {value}" for key, value in env.items())
            machines += [f"`{experiment.name}.json`:", items]
    table = markdown_table(["section", "target", "measured", "verdict"], targets)
    parts = ["# Benchmark results", INTRO, "## Targets at a glance"]
    parts += [table if targets else "No target has been measured yet.", *sections, "## Machines"]
    content = "\n\n".join([*parts, *machines]).rstrip() + "\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(content)
    return content
