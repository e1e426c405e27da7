"""Optuna studies that a stop request leaves resumable: each in ``<work>/<study name>/``
(``sweep.yaml``, ``study.db``), continued by the same command or ``o2nc-sweep --config`` it."""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from lightning_o2nc.sweeps import run_sweep
from lightning_o2nc.sweeps.config import load_sweep_config
from lightning_o2nc.sweeps.signals import STOP_SIGNALS, TrialInterrupted

from .harness import run_jobs

STOP_FILE = "stop-requested"
#: What a seed sets: the initialization, the data split and order, and the scalar stream.
SEEDED = ("seed_everything", "model.seed", "data.init_args.seed")


def write_sweep(spec: dict[str, Any], work: Path) -> Any:
    """The sweep ``spec``, written to ``<work>/<study>/sweep.yaml`` and loaded from there."""
    path = work / spec["study_name"] / "sweep.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_sweep_config(path)


def run_study(work: Path, sweep_of: Callable[..., Any], *args: Any) -> Any:
    """Run (or continue) the study of ``sweep_of(*args)``, made only if no stop request came; None
    once one came, before or during the study."""
    if (work / STOP_FILE).exists():
        return None
    sweep = sweep_of(*args)
    folder, quiet = work / sweep.study_name, {"progress": False, "plots": False}
    try:
        outcome = run_sweep(sweep, logdir=folder, storage=f"sqlite:///{folder}/study.db", **quiet)
    except TrialInterrupted:  # a stop request before the study was opened
        return None
    return None if outcome.interrupted else outcome.study


def run_stoppable_jobs(function: Callable, tasks: Sequence, workers: int, work: Path) -> list[dict]:
    """:func:`run_jobs` of jobs returning ``{"stopped": True}`` once a stop request came.
    SIGINT/SIGTERM only write ``<work>/stop-requested`` (joblib would kill the workers): workers,
    in this process group, get the signal too; then KeyboardInterrupt ends the run (exit 130)."""
    flag = work / STOP_FILE
    flag.unlink(missing_ok=True)
    previous = {signum: signal.signal(signum, lambda *_: flag.touch()) for signum in STOP_SIGNALS}
    try:
        if workers:
            results = run_jobs(function, tasks, workers)
        else:  # in this process, a job's own handler sees the signal: start no job after it
            results = []
            for args in tasks:
                results.append(function(*args))
                if results[-1].get("stopped"):
                    break
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if flag.exists() or any(result.get("stopped") for result in results):
        raise KeyboardInterrupt("stopped: run the same command to continue")
    return results
