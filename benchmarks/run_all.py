"""Run every benchmark, then render RESULTS.md from what they stored (``make bench``).

    python -m benchmarks.run_all                 # full: each script writes benchmarks/results/<name>.json
    python -m benchmarks.run_all --quick         # smoke: results and RESULTS.md under the work folder
    python -m benchmarks.run_all --only tuned_parity,eta_sensitivity

This module only plans and runs: each benchmark is its own script and writes its own JSON
(:data:`BENCHMARKS` says with which arguments), and :mod:`benchmarks.render` turns the JSON files
into Markdown. A benchmark that fails is reported and the others still run; RESULTS.md then keeps
that benchmark's previous JSON (or says it has not run). The exit status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .render import render
from .report import RESULTS_PATH, work_dir
from .results import RESULTS_DIR


@dataclass(frozen=True)
class Benchmark:
    """How to run one benchmark script and where it is told to put its JSON."""

    module: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    output_flag: str  # the script's option for the output
    output_is_file: bool = False  # the option takes the JSON file, not its folder


BENCHMARKS: dict[str, Benchmark] = {
    "step_overhead": Benchmark(
        "benchmarks.step_overhead", ("--rounds", "40"), ("--rounds", "4"), "--json", True
    ),
    "throughput": Benchmark(
        "benchmarks.throughput",
        ("--batches", "40"),
        ("--dataset", "digits", "--batches", "10", "--repeats", "2"),
        "--out",
    ),
    "accuracy_parity": Benchmark(
        "benchmarks.accuracy_parity",
        (),
        (
            "--dataset",
            "digits",
            "--epochs",
            "12",
            "--limit-train-batches",
            "0",
            "--val-batches",
            "6",
        ),
        "--out",
    ),
    "tuned_parity": Benchmark("benchmarks.tuned_parity", (), ("--quick",), "--out"),
    "eta_sensitivity": Benchmark("benchmarks.eta_sensitivity", (), ("--quick",), "--out"),
    "transformer_evidence": Benchmark("benchmarks.transformer_evidence", (), ("--quick",), "--out"),
    "sweep_scaling": Benchmark(
        "benchmarks.sweep_scaling", (), ("--quick",), "--output", output_is_file=True
    ),
    "storage_throughput": Benchmark(
        "benchmarks.storage_throughput",
        (),
        ("--seconds", "2", "--workers", "1", "4"),
        "--output-dir",
    ),
}


def run_benchmark(name: str, args: tuple[str, ...] | list[str], results_dir: Path) -> bool:
    """``<module>.main(args)`` with its output in ``results_dir``; False (and the traceback) on error."""
    benchmark = BENCHMARKS[name]
    target = results_dir / f"{name}.json" if benchmark.output_is_file else results_dir
    print(f"\n=== {name} ===", flush=True)
    started = time.perf_counter()
    try:
        importlib.import_module(benchmark.module).main([*args, benchmark.output_flag, str(target)])
    except (Exception, SystemExit) as error:
        if isinstance(error, SystemExit) and not error.code:
            return True
        traceback.print_exc()
        print(f"=== {name}: FAILED ===", flush=True)
        return False
    print(f"=== {name}: done in {time.perf_counter() - started:.0f} s ===", flush=True)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="minutes, into the work folder")
    parser.add_argument("--only", help=f"comma-separated, from: {', '.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; valid: {', '.join(BENCHMARKS)}")
    results_dir = work_dir() / "quick" / "results" if args.quick else RESULTS_DIR
    output = results_dir.parent / "RESULTS.md" if args.quick else RESULTS_PATH
    results_dir.mkdir(parents=True, exist_ok=True)
    failed = [
        name
        for name in names
        if not run_benchmark(
            name,
            BENCHMARKS[name].quick if args.quick else BENCHMARKS[name].full,
            results_dir,
        )
    ]
    render(results_dir, output)
    print(f"\nwrote {output}", flush=True)
    if failed:
        raise SystemExit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
