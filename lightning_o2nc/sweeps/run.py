"""Run (or continue) a sweep on this machine: one worker of a possibly shared study."""

from __future__ import annotations

import contextlib
import gc
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial
from rich.console import Console

from .config import SweepConfig, spawn_strategy
from .distinct import DUPLICATE_OF, DuplicateConfiguration, worker_seed
from .objective import NonFiniteObjective, SweepObjective, check_trial_config
from .progress import SweepProgress
from .report import Report, write_report
from .samplers import build_sampler
from .signals import StopRequest, TrialInterrupted
from .storage import open_resolved_storage, redact, refuse_ddp_without_rdb
from .study import StopWhenStudyIsComplete, StudyFull, count_finished, open_study

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
    exit_status: int = 0

    @property
    def redacted_storage(self) -> str:
        return redact(self.storage_url, self.storage_url)


@contextmanager
def _quiet_libraries():
    """Optuna's per-trial INFO lines and Lightning's set-up chatter would drown the display."""
    optuna_level = optuna.logging.get_verbosity()
    # Optuna's own "Trial N failed" warnings (with a traceback) repeat what the display prints.
    names = ("lightning.pytorch", "lightning.fabric", "optuna.study._optimize")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for logger in loggers:
        logger.setLevel(logging.ERROR if logger.name.startswith("optuna") else logging.WARNING)
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
    stop: StopRequest | None = None,
) -> SweepOutcome:
    """Run trials until the study holds ``sweep.n_trials`` finished ones (or the timeout).

    Every worker of a shared study calls this with the same storage and study name; a worker
    started on a finished study runs nothing and rewrites the report. SIGINT and SIGTERM stop
    it at the next safe point (see :mod:`lightning_o2nc.sweeps.signals`): the running trial is recorded as
    failed and queued again, the report is written for what finished, and the outcome says
    ``interrupted``.

    Args:
        sweep: the validated sweep definition.
        logdir: where the TensorBoard runs, the default SQLite file and the report go.
        storage: a database URL; ``None`` reads ``$O2NC_SWEEP_STORAGE``, else SQLite in logdir.
        storage_class: ``JournalFileBackend`` makes ``storage`` a journal file (Optuna's CLI
            convention); ``None`` reads ``$O2NC_SWEEP_STORAGE_CLASS``, else the sweep file's.
        progress: show the live rich display.
        console: where the display and messages go.
        plots: draw the report's plots (the report itself is always written).
        stop: a stop request whose handlers the caller installed (the CLI does, at start-up);
            ``None`` installs one for the duration of the call.

    Raises:
        TrialInterrupted: when a stop was requested before the study was opened.
    """
    own = stop is None
    stop = stop or StopRequest()
    installed = stop.installed() if own else contextlib.nullcontext()
    with installed, stop.deferred(), _quiet_libraries():
        return _run(sweep, Path(logdir), storage, storage_class, progress, console, plots, stop)


def _run(
    sweep: SweepConfig,
    logdir: Path,
    storage: str | None,
    storage_class: str | None,
    progress: bool,
    console: Console | None,
    plots: bool,
    stop: StopRequest,
) -> SweepOutcome:
    spawn = spawn_strategy(sweep.base_config.get("trainer") or {})
    logdir.mkdir(parents=True, exist_ok=True)
    url, backend = open_resolved_storage(storage, storage_class, logdir, sweep.storage)
    if spawn is not None:
        refuse_ddp_without_rdb(backend, url, spawn)
    check_trial_config(sweep, stop)  # a bad override: one line, and no study yet
    study = open_study(sweep, backend, logdir)
    display = SweepProgress(
        sweep.n_trials,
        sweep.objective.monitor,
        sweep.objective.direction,
        console=console,
        enabled=progress,
    )
    objective = SweepObjective(sweep, logdir, display if progress else None, stop=stop)
    stop.last_words = lambda: _left_running(backend, sweep, objective.running)
    with display:
        try:
            stop.raise_if_requested()
            study.sampler = build_sampler(
                sweep.sampler, sweep.space, worker_seed(study, sweep.seed)
            )
            optuna.storages.fail_stale_trials(study)
            display.show_study(study)
            if count_finished(study) >= sweep.n_trials:
                display.print(
                    f"study {sweep.study_name!r} already holds {sweep.n_trials} finished trials; "
                    "raise --n-trials to run more"
                )
            else:
                # Everything alive now (torch, Lightning, the study) lives as long as the worker:
                # freezing it keeps every full collection (gc_after_trial's, and Python's own)
                # from walking it again, ~210 -> ~45 ms each on the digits demo.
                gc.collect()
                gc.freeze()
                # No n_trials here: a skipped duplicate or an interrupted trial does not count,
                # so the study's own count decides when this worker is done.
                try:
                    study.optimize(
                        objective,
                        timeout=sweep.timeout,
                        catch=(NonFiniteObjective, DuplicateConfiguration, StudyFull),
                        callbacks=[
                            objective.trial_recorded,
                            display.trial_finished,
                            StopWhenStudyIsComplete(sweep.n_trials),
                            _StopOnRequest(stop, display),
                            _StopWhenOnlyDuplicates(display),
                        ],
                        gc_after_trial=True,
                    )
                finally:
                    # Optuna records a trial's state before an exception leaves optimize.
                    objective.running = None
        except TrialInterrupted:
            display.print(_interruption_message(stop, objective))
        stop.last_words = lambda: ""
    written = write_report(study, storage_url=url, logdir=logdir, plots=plots)
    return SweepOutcome(
        study, url, logdir, written, objective.trials_run, stop.requested, stop.exit_status
    )


class _StopOnRequest:
    """Optuna callback: end the loop between trials once a stop was asked for."""

    def __init__(self, stop: StopRequest, display: SweepProgress) -> None:
        self.stop = stop
        self.display = display

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.stop.requested:
            self.display.print(
                f"{self.stop.signal_name}: stopped between trials; no trial was interrupted"
            )
            study.stop()


class _StopWhenOnlyDuplicates:
    """Optuna callback: stop when the sampler keeps proposing configurations the study holds.

    A small discrete space can run out of new configurations; without this the worker would
    draw duplicates forever (they do not count towards ``n_trials``).
    """

    limit = 20

    def __init__(self, display: SweepProgress) -> None:
        self.display = display
        self.in_a_row = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.in_a_row = self.in_a_row + 1 if DUPLICATE_OF in trial.user_attrs else 0
        if self.in_a_row >= self.limit:
            self.display.print(
                f"stopping: the last {self.limit} configurations drawn were all in the study "
                "already; the search space looks exhausted"
            )
            study.stop()


def _interruption_message(stop: StopRequest, objective: SweepObjective) -> str:
    name = stop.signal_name
    if objective.interrupted is None:
        return f"{name}: stopped before any trial started"
    number, queued = objective.interrupted
    message = f"{name}: trial {number} interrupted and recorded as failed (not counted)"
    if queued:
        return message + (
            "; its parameters are queued again (a worker of this study runs queued trials "
            "before it samples new ones): run the same command to continue"
        )
    return message + "; it had drawn no parameters, so there is nothing to queue again"


def _left_running(storage: BaseStorage, sweep: SweepConfig, number: int | None) -> str:
    """What a second signal leaves behind, said truthfully before exiting at once."""
    if number is None:
        return "; no trial was running"
    text = f"; trial {number} is left RUNNING"
    if not is_heartbeat_enabled(storage):  # optuna's helper, private in Optuna 5.0
        return text + " (this storage has no heartbeat: mark it failed by hand)"
    spec = sweep.storage
    text += (
        f": once its heartbeat is {spec.grace_period} s old, the next worker of this study to "
        "start a trial (or a new o2nc-sweep) marks it failed"
    )
    if spec.max_retry == 0:
        return text + " (storage.max_retry is 0: it is not retried)"
    limit = "" if spec.max_retry is None else f", at most {spec.max_retry} times per trial"
    return text + f" and queues its parameters again{limit}"
