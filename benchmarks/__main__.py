"""The benchmark runner.

    python -m benchmarks list                          # every experiment: workload, arms, measurement
    python -m benchmarks run NAME [NAME ...] [--quick] [--set KEY=VALUE ...]
    python -m benchmarks run all [--quick]             # every experiment that runs here (make bench)
    python -m benchmarks render                        # RESULTS.md from benchmarks/results/*.json

A full run stores ``benchmarks/results/NAME.json`` (and figures) and re-renders RESULTS.md;
``--quick`` runs tiny settings into ``benchmarks/_work/quick/``. ``--set`` overrides one setting (a
YAML value: ``--set seeds=[0,1]``). A failed experiment is reported and the others still run (exit
status 1; 130 after Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import yaml

from .experiments import SECTIONS, every, get
from .harness import RESULTS_DIR, RESULTS_PATH, quick_dir, run_experiment
from .render import render


def _overrides(pairs: list[str]) -> dict:
    split = [pair.partition("=") for pair in pairs]  # (key, "=", value)
    if bad := [key + sep + value for key, sep, value in split if not (key and sep)]:
        raise SystemExit(f"--set {bad[0]!r}: expected KEY=VALUE, e.g. --set seeds=[0,1]")
    return {key: yaml.safe_load(value) for key, _, value in split}


def list_experiments() -> None:
    for e in every():
        print(f"{e.name}: {e.title}\n  run:         {e.how_to_run}\n  workload:    {e.workload}")
        print(f"  arms:        {', '.join(e.arms)}\n  measurement: {e.measurement}")
        print(f"  settings:    {e.settings}\n")


def run(names: list[str], quick: bool, overrides: dict) -> int:
    """Run ``names`` in turn; return the number that failed."""
    if names == ["all"]:
        names = [e.name for e in every() if e.command is None]
    experiments = [get(name) for name in names]
    for experiment in experiments:  # validate every --set before anything runs
        experiment.resolve(quick, overrides)
    failed = 0
    for experiment in experiments:
        print(f"\n=== {experiment.name} ===", flush=True)
        try:
            outcome = f"wrote {run_experiment(experiment, quick, overrides)}"
        except Exception:
            traceback.print_exc()
            outcome, failed = "FAILED", failed + 1
        print(f"=== {experiment.name}: {outcome} ===", flush=True)
    folder = quick_dir() if quick else RESULTS_DIR
    render(folder, output := folder.parent / "RESULTS.md")  # beside the results, as RESULTS_PATH
    print(f"wrote {output}", flush=True)
    return failed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser("python -m benchmarks", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every experiment and what it measures")
    runner = commands.add_parser("run", help="run experiments and store their results")
    runner.add_argument("names", nargs="+", metavar="NAME", help=f"all | {' | '.join(SECTIONS)}")
    runner.add_argument("--quick", action="store_true", help="tiny settings, into the work folder")
    runner.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="pairs")
    renderer = commands.add_parser("render", help="RESULTS.md from the stored results")
    renderer.add_argument("--results", default=str(RESULTS_DIR), help="folder of the JSON")
    renderer.add_argument("--output", default=str(RESULTS_PATH), help="the Markdown to write")
    args = parser.parse_args(argv)
    if args.command == "list":
        list_experiments()
    elif args.command == "render":
        render(Path(args.results), Path(args.output))
        print(f"wrote {args.output}")
    else:
        try:
            failed = run(args.names, args.quick, _overrides(args.pairs))
        except ValueError as error:  # an unknown experiment or setting: one line, nothing ran
            raise SystemExit(f"python -m benchmarks run: {error}") from None
        except KeyboardInterrupt:
            print("interrupted: finished experiments are stored", file=sys.stderr)
            raise SystemExit(130) from None
        if failed:
            raise SystemExit(f"{failed} experiment(s) failed")


if __name__ == "__main__":
    main()
