"""Render ``benchmarks/RESULTS.md`` from the raw results in ``benchmarks/results/*.json`` alone.

    python -m benchmarks.render                 # benchmarks/results -> benchmarks/RESULTS.md
    python -m benchmarks.render --results DIR --output FILE

Nothing is measured here and nothing is read back from Markdown: every section is a function of
one JSON file, found through :data:`SECTIONS`, a registry of (file, title, renderer). A section
whose file is missing says which command produces it; a renderer that fails says so in its section
and the others still render.

The JSON shape every file shares (each benchmark adds its own raw data next to these keys):

- ``command`` (str): the command line that produced the file;
- ``seconds`` (float, optional): its wall time;
- ``machine`` (dict of str, optional): :func:`benchmarks.report.machine_description` at run time;
- ``figures`` (list of str, optional): PNG files next to the JSON, shown under the section.

A renderer is ``"module:function"``; the function takes the parsed dict and returns Markdown. An
optional targets function returns ``(target, measured, verdict)`` rows for the table at the top.
The renderers of the other benchmarks read these shapes:

- ``step_overhead.json`` (:mod:`benchmarks.step_overhead`): ``models`` -> model -> ``rows`` (one
  per arm: ``arm``, ``ratio``, ``ratio_iqr``, ``median_us``, ...), and ``targets``;
- ``sweep_scaling.json`` (:mod:`benchmarks.sweep_scaling`, rendered by
  :mod:`benchmarks.sweep_scaling_report`): ``overhead``, ``workers`` (``one``/``two``),
  ``pruning`` (``pruned``/``unpruned``), ``quick``, ``cpus``;
- ``storage_throughput.json`` (:mod:`benchmarks.storage_throughput`): ``rows`` (``storage``,
  ``workers``, ``trials``, ``seconds``, ``trials_per_s``) and ``seconds_per_cell``;
- ``tuned_parity.json``: see :mod:`benchmarks.tuned_report`;
- ``eta_sensitivity.json``, ``accuracy_parity.json``, ``throughput.json`` (:mod:`benchmarks.throughput_report`),
  ``cifar10_resnet18.json``, ``gpu_check.json`` (:mod:`benchmarks.gpu_report`): see the module of the same name.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report import RESULTS_PATH, machine_markdown, markdown_table
from .results import RESULTS_DIR, UNIFORM_SCALING, read_result


@dataclass(frozen=True)
class Section:
    """One section of RESULTS.md: the JSON file it is rendered from, and how."""

    name: str  # benchmarks/results/<name>.json
    title: str
    render: str  # "module:function", result dict -> Markdown
    command: str  # what produces the file
    targets: str | None = None  # "module:function", result dict -> [(target, measured, verdict)]


SECTIONS = [
    Section(
        "tuned_parity",
        "Tuned comparison: SGDM against O2NC, each at its own best configuration",
        "benchmarks.tuned_report:to_markdown",
        "python -m benchmarks.tuned_parity",
        "benchmarks.tuned_report:targets",
    ),
    Section(
        "tuned_parity_gpu",
        "Tuned comparison on a GPU: full Fashion-MNIST, 30 epochs",
        "benchmarks.tuned_report:to_markdown",
        "bash benchmarks/tuned_parity_gpu.sh",
        "benchmarks.tuned_report:targets",
    ),
    Section(
        "transformer_evidence",
        "Transformer (character-level GPT)",
        "benchmarks.transformer_report:to_markdown",
        "python -m benchmarks.transformer_evidence",
    ),
    Section(
        "eta_sensitivity",
        "η-sensitivity and stability limits",
        "benchmarks.eta_sensitivity:to_markdown",
        "python -m benchmarks.eta_sensitivity",
    ),
    Section(
        "accuracy_parity",
        "Fixed-η parity (every arm at SGDM's η) and the stationarity panel",
        "benchmarks.accuracy_parity:to_markdown",
        "python -m benchmarks.accuracy_parity",
        "benchmarks.accuracy_parity:targets",
    ),
    Section(
        "step_overhead",
        "Optimizer step overhead",
        "benchmarks.step_overhead:to_markdown",
        "python -m benchmarks.step_overhead",
        "benchmarks.render:step_overhead_targets",
    ),
    Section(
        "throughput",
        "End-to-end throughput (Lightning fit)",
        "benchmarks.throughput_report:to_markdown",
        "python -m benchmarks.throughput",
        "benchmarks.throughput_report:targets",
    ),
    Section(
        "sweep_scaling",
        "Sweep scaling",
        "benchmarks.sweep_scaling_report:to_markdown",
        "python -m benchmarks.sweep_scaling",
        "benchmarks.sweep_scaling_report:targets",
    ),
    Section(
        "storage_throughput",
        "Sweep storage throughput",
        "benchmarks.storage_throughput:to_markdown",
        "python -m benchmarks.storage_throughput",
    ),
    Section(
        "cifar10_resnet18",
        "CIFAR-10 / ResNet-18 (the paper's experiment)",
        "benchmarks.cifar10_resnet18:to_markdown",
        "python -m benchmarks.cifar10_resnet18 --data-root DATA --seeds 0 1 2",
    ),
    Section(
        "gpu_check",
        "GPU check",
        "benchmarks.gpu_report:to_markdown",
        "python -m benchmarks.gpu_check merge OUT_FOLDER (after benchmarks/gpu_check.sh on a GPU)",
        "benchmarks.gpu_report:targets",
    ),
]


def _function(spec: str) -> Callable[[dict[str, Any]], Any]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def step_overhead_targets(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """:func:`benchmarks.step_overhead.targets`' dicts as rows of the targets table."""
    return [
        (
            f"{check['arm']} ≤ {check['at_most']}× {_baseline(check)} ({check['model']})",
            f"{check['ratio']:.3f}×",
            "met" if check["met"] else "**missed**",
        )
        for check in _function("benchmarks.step_overhead:targets")(result)
    ]


def _baseline(check: dict[str, Any]) -> str:
    baseline = check.get("baseline", "SGD")
    return "the faster SGD path" if baseline.startswith("SGD") else baseline


def _figures(result: dict[str, Any], results_dir: Path, output: Path) -> list[str]:
    return [
        f"![{Path(name).stem}]({os.path.relpath(results_dir / name, output.parent)})"
        for name in result.get("figures", [])
    ]


def _unweighted_uniform_note(result: dict[str, Any]) -> str:
    """A warning for a result whose uniform arm ran before uniform scaling had its weight."""
    if result.get("uniform_scaling") == UNIFORM_SCALING or "uniform" not in json.dumps(result):
        return ""
    return (
        "> **Measured before uniform scaling gained the authors' importance weight.** The "
        "uniform (U(0, 2)) figures below are of the unweighted variant, which nobody proposed; "
        '`scaling="uniform"` now multiplies the next gradient by 2 − s. The rerun replaces them.'
    )


def render_section(
    section: Section, results_dir: Path, output: Path
) -> tuple[str, list[tuple[str, str, str, str]]]:
    """The Markdown of one section and its rows of the targets table."""
    result = read_result(section.name, results_dir)
    if result is None:
        return f"**Not run yet.** `{section.command}` writes `results/{section.name}.json`.", []
    try:
        body = _function(section.render)(result)
        rows = [
            (section.title, *row)
            for row in (_function(section.targets)(result) if section.targets else [])
        ]
    except Exception as error:  # one broken renderer must not hide the other sections
        traceback.print_exc()
        failure = f"**Could not render** `results/{section.name}.json`: `{error!r}`."
        return "\n\n".join(p for p in (_unweighted_uniform_note(result), failure) if p), []
    meta = f"Command: `{result['command'].strip('`')}`" if result.get("command") else ""
    if result.get("seconds") is not None:
        meta += f" ({result['seconds'] / 60:.1f} min)"
    parts = [_unweighted_uniform_note(result), body, meta, *_figures(result, results_dir, output)]
    return "\n\n".join(part for part in parts if part), rows


def render(results_dir: Path = RESULTS_DIR, output: Path = RESULTS_PATH) -> str:
    """Write ``output`` from every registered section's JSON in ``results_dir``; return the text."""
    sections, targets = [], []
    for number, section in enumerate(SECTIONS, start=1):
        text, rows = render_section(section, results_dir, output)
        sections += [f"## {number}. {section.title}", "", text, ""]
        targets += rows
    machines = {
        section.name: read_result(section.name, results_dir).get("machine")
        for section in SECTIONS
        if (results_dir / f"{section.name}.json").is_file()
    }
    lines = [
        "# Benchmark results",
        "",
        "Rendered by `python -m benchmarks.render` from the raw results in "
        "`benchmarks/results/*.json`, which the scripts in `benchmarks/` write (each section names "
        "its command; `make bench` runs them all). Nothing here is typed by hand.",
        "",
        "## Targets at a glance",
        "",
        markdown_table(["section", "target", "measured", "verdict"], targets)
        if targets
        else "No target has been measured yet.",
        "",
        *sections,
        "## Machines",
        "",
    ]
    for name, machine in machines.items():
        if machine:
            lines += [f"`{name}.json`:", "", machine_markdown(machine), ""]
    content = "\n".join(lines).rstrip() + "\n"
    output.write_text(content)
    return content


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of the JSON")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="the Markdown to write")
    args = parser.parse_args(argv)
    render(args.results, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
