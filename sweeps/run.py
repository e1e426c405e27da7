"""Run (or continue) a sweep on this machine: one worker of a possibly shared study."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
from rich.console import Console

from .config import SweepConfig
from .objective import NonFiniteObjective, SweepObjective, spawn_strategy
from .progress import SweepProgress
from .report import Report, write_report
from .storage import (
    open_storage,
    redact,
    refuse_ddp_without_rdb,
    resolve_storage_class,
    resolve_storage_url,
)
from .study import StopWhenStudyIsComplete, count_finished, open_study

__all__ = ["SweepOutcome", "run_sweep"]


@dataclass
class SweepOutcome:
    """What one worker's run left behind."""

    study: optuna.Study
    storage_url: str
    logdir: Path
    report: Report
    trials_run: int
    interrupted: bool = False

    @property
    def redacted_storage(self) -> str:
        return redact(self.storage_url, self.storage_url)


@contextmanager
def _quiet_libraries():
    """Optuna's per-trial INFO lines and Lightning's set-up chatter would drown the display."""
    optuna_level = optuna.logging.get_verbosity()
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # build_run hands the config to LightningCLI as `args` while sys.argv holds ours.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
        try:
            yield
        finally:
            optuna.logging.set_verbosity(optuna_level)
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def run_sweep(
    sweep: SweepConfig,
    *,
    logdir: str | Path,
    storage: str | None = None,
    storage_class: str | None = None,
    progress: bool = True,
    console: Console | None = None,
    plots: bool = True,
) -> SweepOutcome:
    """Run trials until the study holds ``sweep.n_trials`` finished ones (or the timeout).

    Every worker of a shared study calls this with the same storage and study name; a worker
    started on a finished study runs nothing and rewrites the report.

    Args:
        sweep: the validated sweep definition.
        logdir: where the TensorBoard runs, the default SQLite file and the report go.
        storage: a database URL; ``None`` reads ``$O2NC_SWEEP_STORAGE``, else SQLite in logdir.
        storage_class: ``JournalFileBackend`` makes ``storage`` a journal file (Optuna's CLI
            convention); ``None`` reads ``$O2NC_SWEEP_STORAGE_CLASS``, else the sweep file's.
        progress: show the live rich display.
        console: where the display and messages go.
        plots: draw the report's plots (the report itself is always written).
    """
    spawn = spawn_strategy(sweep.trial_config({}).get("trainer") or {})  # refuse before any trial
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    storage_class = resolve_storage_class(storage_class, sweep.storage)
    url = resolve_storage_url(storage, logdir, storage_class)
    with _quiet_libraries():
        backend = open_storage(url, sweep.storage, storage_class)
        if spawn is not None:
            refuse_ddp_without_rdb(backend, url, spawn)
        study = open_study(sweep, backend, logdir)
        optuna.storages.fail_stale_trials(study)
        remaining = sweep.n_trials - count_finished(study)
        display = SweepProgress(
            sweep.n_trials,
            sweep.objective.monitor,
            sweep.objective.direction,
            console=console,
            enabled=progress,
        )
        interrupted = False
        objective = SweepObjective(sweep, logdir, display if progress else None)
        with display:
            display.show_study(study)
            if remaining <= 0:
                display.print(
                    f"study {sweep.study_name!r} already holds {sweep.n_trials} finished trials; "
                    "raise --n-trials to run more"
                )
            else:
                try:
                    study.optimize(
                        objective,
                        n_trials=remaining,
                        timeout=sweep.timeout,
                        catch=(NonFiniteObjective,),
                        callbacks=[display.trial_finished, StopWhenStudyIsComplete(sweep.n_trials)],
                        gc_after_trial=True,
                    )
                except KeyboardInterrupt:
                    interrupted = True
                    display.print(
                        "interrupted: the running trial is queued again; run the same command to "
                        "continue the study"
                    )
        written = write_report(study, storage_url=url, logdir=logdir, plots=plots)
    return SweepOutcome(study, url, logdir, written, objective.trials_run, interrupted)
