"""Sweep scaling on the digits demo: trials per hour with 1 and 2 workers, and epochs saved by pruning.

Both parts run the real ``o2nc-sweep`` command (as separate processes, each with one torch thread)
on ``configs/sweeps/digits.yaml`` with a fresh SQLite study:

- **Workers**: the same number of trials on one study by 1 worker, then by 2 workers started
  together. The random sampler without pruning makes every trial the same amount of work.
  Trials per hour are counted between the first trial's start and the last one's end, as stored
  in the study (process start-up and the report are excluded; the wall time is shown too).
- **Pruning**: the demo's TPE sweep with its median pruner, and the same sweep (same seed) without
  pruning: epochs trained and best value of each.

Run: ``python -m benchmarks.sweep_scaling [--quick]``; ``run(quick)`` returns the markdown section
for ``benchmarks/run_all.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
WORK_DIR = REPO_ROOT / "benchmarks" / "_work" / "sweep_scaling"
DEMO = REPO_ROOT / "configs" / "sweeps" / "digits.yaml"


@dataclass
class SweepTiming:
    """One measured sweep: its trials and how long they took."""

    label: str
    workers: int
    trials: int
    span_s: float
    wall_s: float
    epochs: int
    best: float | None

    @property
    def trials_per_hour(self) -> float:
        return 3600.0 * self.trials / self.span_s if self.span_s > 0 else float("nan")


def _sweep_file(name: str, **changes: Any) -> Path:
    spec = yaml.safe_load(DEMO.read_text())
    spec["train_config"] = str((DEMO.parent / spec["train_config"]).resolve())
    overrides = dict(spec.get("overrides") or {})
    overrides.update(changes.pop("overrides", {}))
    spec["overrides"] = overrides
    spec.update(changes)
    path = WORK_DIR / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run_workers(label: str, sweep: Path, workers: int) -> SweepTiming:
    import optuna

    from sweeps.storage import open_storage
    from sweeps.study import is_finished_for_good

    logdir = WORK_DIR / label
    shutil.rmtree(logdir, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("O2NC_SWEEP_STORAGE", None)
    command = [sys.executable, "-m", "sweeps.cli", "--config", str(sweep), "--logdir", str(logdir)]
    command += ["--no-progress", "--no-plots"]
    logdir.mkdir(parents=True)
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            command,
            env=env,
            stdout=(logdir / f"worker{i}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for i in range(workers)
    ]
    for i, process in enumerate(processes):
        if process.wait() != 0:
            raise RuntimeError(
                f"{label}: worker {i} failed:\n{(logdir / f'worker{i}.log').read_text()[-3000:]}"
            )
    wall = time.perf_counter() - started
    name = yaml.safe_load(sweep.read_text())["study_name"]
    study = optuna.load_study(
        study_name=name, storage=open_storage(f"sqlite:///{logdir / 'optuna.db'}")
    )
    finished = [t for t in study.trials if is_finished_for_good(t)]
    span = max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)
    try:
        best = study.best_value
    except ValueError:
        best = None
    return SweepTiming(
        label,
        workers,
        len(finished),
        span.total_seconds(),
        wall,
        sum(int(t.user_attrs.get("epochs_trained", 0)) for t in finished),
        best,
    )


def measure(quick: bool) -> dict[str, Any]:
    """Run both parts; the sizes are the demo's (full) or a few trials (quick)."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    demo = yaml.safe_load(DEMO.read_text())
    demo_size = (demo["n_trials"], demo["overrides"]["trainer.max_epochs"])
    n_scale, epochs_scale = (4, 4) if quick else (12, demo_size[1])
    n_prune, epochs_prune = (12, 6) if quick else demo_size  # full: the demo itself
    scaling = _sweep_file(
        "scaling",
        study_name="scaling",
        n_trials=n_scale,
        sampler={"name": "random"},
        pruner={"name": "none"},
        overrides={"trainer.max_epochs": epochs_scale},
    )
    one = _run_workers("workers_1", scaling, 1)
    two = _run_workers("workers_2", scaling, 2)
    pruned_file = _sweep_file(
        "pruned",
        study_name="pruned",
        n_trials=n_prune,
        overrides={"trainer.max_epochs": epochs_prune},
    )
    unpruned_file = _sweep_file(
        "unpruned",
        study_name="unpruned",
        n_trials=n_prune,
        pruner={"name": "none"},
        overrides={"trainer.max_epochs": epochs_prune},
    )
    pruned = _run_workers("pruned", pruned_file, 1)
    unpruned = _run_workers("unpruned", unpruned_file, 1)
    return {"one": one, "two": two, "pruned": pruned, "unpruned": unpruned, "quick": quick}


def to_markdown(results: dict[str, Any]) -> str:
    """The ``## Sweep scaling`` section of ``RESULTS.md``."""
    one, two = results["one"], results["two"]
    pruned, unpruned = results["pruned"], results["unpruned"]
    speedup = two.trials_per_hour / one.trials_per_hour
    saved = 1 - pruned.epochs / unpruned.epochs if unpruned.epochs else float("nan")

    def best(t: SweepTiming) -> str:
        return "-" if t.best is None else f"{t.best:.4f}"

    rows = [
        f"| {t.label} | {t.workers} | {t.trials} | {t.span_s:.1f} | {t.wall_s:.1f} | "
        f"{t.trials_per_hour:.0f} | {t.epochs} | {best(t)} |"
        for t in (one, two, pruned, unpruned)
    ]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return "\n".join(
        [
            "## Sweep scaling (digits demo sweep)",
            "",
            f"`python -m benchmarks.sweep_scaling{' --quick' if results['quick'] else ''}`; "
            f"{cpus} CPU cores, one torch thread per worker, SQLite storage.",
            "",
            "| sweep | workers | trials | trial span (s) | wall (s) | trials/hour | epochs | best val/acc_avg |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"- 2 workers vs 1: **{speedup:.2f}x** trials per hour (target >= 1.8x on 2 cores).",
            f"- median pruning: **{saved:.0%}** of the epochs saved ({pruned.epochs} vs "
            f"{unpruned.epochs}), best value {best(pruned)} with pruning vs {best(unpruned)} "
            "without (target >= 40% saved for the same best value).",
            "",
        ]
    )


def run(quick: bool) -> str:
    """Measure and return the markdown section (for ``benchmarks/run_all.py``)."""
    section = to_markdown(measure(quick))
    print(section)
    return section


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few trials per sweep")
    args = parser.parse_args(argv)
    run(args.quick)


if __name__ == "__main__":
    main()
