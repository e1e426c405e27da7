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
from lightning_o2nc.sweeps.objective import FAIL_REASON
from lightning_o2nc.sweeps.signals import INTERRUPTED_BY, STOP_SIGNALS, TrialInterrupted

from .harness import run_jobs
from .stats import markdown_table

STOP_FILE = "stop-requested"
#: What a seed sets: the initialization, the data split and order, and the scalar stream.
SEEDED = ("seed_everything", "model.seed", "data.init_args.seed")
#: A study's trials by outcome, as :func:`trial_counts` counts them (and results store them).
OUTCOMES = ("trials", "completed", "pruned", "diverged", "failed")


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


def trial_counts(trials: list[Any]) -> dict[str, int]:
    """The study's trials by outcome. A trial a stop request interrupted (Ctrl-C, session end) was
    queued again, and one whose process died (failed for a stale heartbeat) Optuna retried: each
    counts only as ``interrupted``, never as a trial or failure."""
    retried = {t.system_attrs.get("failed_trial") for t in trials}  # RetryFailedTrialCallback's
    kept = [t for t in trials if INTERRUPTED_BY not in t.user_attrs and t.number not in retried]
    states, reasons = [t.state.name for t in kept], [t.user_attrs.get(FAIL_REASON) for t in kept]
    # the sweep fails a diverged trial with its reason ("non-finite training loss ...")
    diverged = sum(s == "FAIL" and "finite" in str(r) for s, r in zip(states, reasons))
    counts = {"trials": len(kept), "completed": states.count("COMPLETE"), "diverged": diverged}
    counts |= {"pruned": states.count("PRUNED"), "failed": states.count("FAIL") - diverged}
    return counts | {"interrupted": len(trials) - len(kept)}


def lr_points(study: Any) -> list[list]:
    """``[model.lr, objective, state]`` of every completed or pruned trial (a pruned trial's
    objective is its last report): how the objective moved with η across the study."""
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    return [[t.params["model.lr"], t.value, t.state.name] for t in finished]


def trial_seconds(study: Any) -> float:
    """The wall time of the study's finished trials, summed (each in its own process)."""
    spans = [(t.datetime_start, t.datetime_complete) for t in study.trials]
    return sum((end - start).total_seconds() for start, end in spans if start and end)


def lr_section(points: dict[str, list], within: float, said: str, maximize: bool = False) -> list:
    """How sensitive each arm is to η, from its study's :func:`lr_points` (``points``: arm ->
    them): the η tried, the best trial's η, and the η range of the completed trials whose objective
    is ``within`` (``said``: in words) of the best (k of n completed); other values vary too."""
    rows = []
    for arm, finished in points.items():
        done = [(lr, value) for lr, value, state in finished or [] if state == "COMPLETE"]
        if not done:  # no completed trial, or a result stored without its trials: no row
            continue
        best_lr, best = (max if maximize else min)(done, key=lambda pair: pair[1])
        near = [lr for lr, value in done if abs(value - best) <= within]
        tried = [lr for lr, *_ in finished]
        window = f"{min(near):.3g}–{max(near):.3g} ({len(near)} of {len(done)})"
        rows.append([arm, f"{min(tried):.3g}–{max(tried):.3g}", f"{best_lr:.3g}", window])
    columns = ["arm", "η tried", "best trial's η", f"η within {said} of the best"]
    intro = "**How sensitive is each arm to η?** Each study's completed trials:"
    return [intro, markdown_table(columns, rows)] if rows else []


def tune_to_counts(work: Path, sweep_of: Callable[..., Any], args: tuple, settings: dict) -> Any:
    """Run (or continue) the study of ``sweep_of(*args, n_trials)`` until it holds
    ``settings["min_trials"]`` trials of which ``min_complete`` completed: each round asks for as
    many more trials as completions are missing, up to ``max_trials`` (the same rule for every
    arm). ``(study, trial_counts)``, or None once a stop request came."""
    n_trials = settings["min_trials"]
    while True:
        study = run_study(work, sweep_of, *args, n_trials)
        if study is None:
            return None
        counts = trial_counts(study.trials)
        missing = settings["min_complete"] - counts["completed"]
        if missing <= 0 or n_trials >= settings["max_trials"]:
            return study, counts
        n_trials = min(settings["max_trials"], n_trials + missing)


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
