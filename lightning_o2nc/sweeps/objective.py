"""One trial: the train config plus the trial's values, handed to Lightning, one value back.

No training loop lives here: :func:`lightning_o2nc.lightning.cli.build_run` builds the Trainer,
module and data module from the config, and ``trainer.fit`` trains them. This module adds what a
sweep needs around that: a TensorBoard run per trial, per-epoch reports for the pruner, a stop
on a non-finite loss, the HParams entry, a stop at the next batch when the worker is asked to
stop (see :mod:`lightning_o2nc.sweeps.signals`), and no training for a configuration the study already holds
(see :mod:`lightning_o2nc.sweeps.distinct`). :func:`check_trial_config` runs one batch of the train config
before any trial exists, so a bad override is refused with one line.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from lightning.pytorch.utilities import rank_zero_info
from optuna_integration import PyTorchLightningPruningCallback
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard.writer import FileWriter
from typing_extensions import override

from lightning_o2nc.lightning.packages import for_package, lightning_class

from .callbacks import CallbackGroup, EpochReporter, NonFiniteLossGuard, StopAtNextBatch
from .config import SweepConfig, spawn_strategy
from .distinct import DUPLICATE_OF, VALUES, DuplicateConfiguration, duplicate_of
from .errors import FAIL_REASON, SweepConfigError
from .paths import flatten_paths, get_path
from .progress import SweepProgress
from .signals import INTERRUPTED_BY, RETRY_OF, StopRequest, TrialInterrupted
from .study import StudyFull, trials_ahead

__all__ = [
    "NonFiniteObjective",
    "SweepObjective",
    "SweepTensorBoardLogger",
    "check_trial_config",
    "trial_run_dir",
]

#: Optuna's key for why a trial failed (system attribute), read by reports and Optuna's tools.
SYSTEM_FAIL_REASON = "fail_reason"


class NonFiniteObjective(RuntimeError):
    """A trial diverged (NaN/inf loss or objective). The study records it as failed and goes on."""


def trial_run_dir(logdir: Path, study_name: str, number: int) -> Path:
    """``<logdir>/<study>/trial_<number>``: the trial's TensorBoard run and its config."""
    return Path(logdir) / study_name / f"trial_{number}"


@lightning_class("loggers.TensorBoardLogger")  # a trial runs under either Lightning package
class SweepTensorBoardLogger:
    """A TensorBoard run whose HParams entry also lists the trial's searched values.

    The module sends its hyper-parameters with the final metrics at the end of fit; this logger
    adds ``extra_hparams`` (the trial number and every searched config path) to that entry, so
    the HParams dashboard compares trials on exactly the dimensions of the sweep.

    Writing costs a small trial little. TensorBoard's writer thread takes each event from a
    queue; one event per scalar, as Lightning's logger writes them, woke that thread (and handed
    it the GIL) a dozen times per logging step, and a full queue (10 events) or Lightning's save
    after every write made the trial wait for it: a tenth of a small trial in all. Here each
    :meth:`log_metrics` call is one event holding all its scalars (TensorBoard reads them as
    before), the queue holds ``MAX_QUEUE`` events, and the file is flushed at most every
    ``FLUSH_SECS`` seconds and at the end of fit.
    """

    #: Seconds between two flushes of the event file (TensorBoard's own writer and ``save``).
    FLUSH_SECS = 10.0
    #: Events the writer thread may have pending before a write waits for it.
    MAX_QUEUE = 1000

    def __init__(self, save_dir: Path, name: str, extra_hparams: Mapping[str, Any]) -> None:
        super().__init__(
            save_dir=str(save_dir),
            name=name,
            version="",
            default_hp_metric=False,
            max_queue=self.MAX_QUEUE,
            flush_secs=self.FLUSH_SECS,
        )
        self.extra_hparams = dict(extra_hparams)
        self.hparams_written = False
        self._saved_at: float | None = None

    @override
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        writer = self.experiment  # a stand-in without file_writer on ranks other than 0
        file_writer = getattr(writer, "file_writer", None)
        if not isinstance(file_writer, FileWriter) or not all(
            isinstance(value, (int, float, torch.Tensor)) for value in metrics.values()
        ):
            super().log_metrics(metrics, step)
            return
        # what torch's summary.scalar makes of each, without its per-value numpy round trip
        values = [Summary.Value(tag=name, simple_value=float(v)) for name, v in metrics.items()]
        file_writer.add_summary(Summary(value=values), step)

    @override
    def save(self) -> None:
        now = time.monotonic()
        if self._saved_at is not None and now - self._saved_at < self.FLUSH_SECS:
            return
        self._saved_at = now
        super().save()

    @override
    def finalize(self, status: str) -> None:
        self._saved_at = None  # the final save is never skipped
        super().finalize(status)

    @override
    def log_hyperparams(
        self,
        params: Any,
        metrics: dict[str, Any] | None = None,
        step: int | None = None,
    ) -> None:
        if metrics:
            params = {**_plain(params), **self.extra_hparams}
            self.hparams_written = True
        super().log_hyperparams(params, metrics=metrics, step=step)


def _plain(params: Any) -> dict[str, Any]:
    if isinstance(params, Mapping):
        return dict(params)
    return dict(vars(params))


class SweepObjective:
    """The callable handed to ``study.optimize``: runs one trial, returns its objective value.

    Args:
        sweep: the validated sweep definition.
        logdir: root of the TensorBoard runs (``<logdir>/<study>/trial_<n>``).
        progress: the live display, or ``None``.
        stop: the worker's stop request; a trial stops at its next batch once it is set.
    """

    def __init__(
        self,
        sweep: SweepConfig,
        logdir: Path,
        progress: SweepProgress | None = None,
        *,
        stop: StopRequest | None = None,
    ) -> None:
        self.sweep = sweep
        self.logdir = Path(logdir)
        self.progress = progress
        self.stop = stop or StopRequest()
        self.grid = sweep.sampler.name == "grid"
        self.trials_run = 0
        #: The trial this worker has started and Optuna has not yet recorded as finished, or
        #: ``None``. Cleared by :meth:`trial_recorded` (and by the caller once ``optimize``
        #: returns or raises), not when this call returns: until Optuna tells the storage, the
        #: trial is still RUNNING there, which is what a second signal must report.
        self.running: int | None = None
        #: ``(number, queued again)`` of the trial a stop request interrupted.
        self.interrupted: tuple[int, bool] | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.running = trial.number
        try:
            self.stop.raise_if_requested()
            assignment = self.sweep.space.suggest(trial, grid=self.grid)
            values = _json_safe(assignment)
            trial.set_user_attr(VALUES, values)
            trials = trial.study.get_trials(deepcopy=False)  # one read for both checks
            if trials_ahead(trials, trial.number) >= self.sweep.n_trials:
                self._step_aside(trial, StudyFull(trial.number, self.sweep.n_trials))
            earlier = duplicate_of(trial, values, trials)
            if earlier is not None:
                trial.set_user_attr(DUPLICATE_OF, earlier)
                self._step_aside(trial, DuplicateConfiguration(trial.number, earlier))
            value = self._train(trial, assignment)
        except (optuna.TrialPruned, NonFiniteObjective):
            self.trials_run += 1
            raise
        except (DuplicateConfiguration, StudyFull):
            raise
        except BaseException as error:
            # Whatever ended the fit once a stop was asked for (our TrialInterrupted, Lightning's
            # SIGTERM SystemExit, a DDP rank that the signal ended) is the interruption.
            if not self.stop.requested:
                raise
            self._interrupted(trial)
            raise TrialInterrupted(self.stop.signal_name) from error
        self.trials_run += 1
        return value

    @staticmethod
    def _step_aside(trial: optuna.Trial, reason: DuplicateConfiguration | StudyFull) -> None:
        """End ``trial`` before training: failed, with ``reason``, and not counted."""
        trial.storage.set_trial_system_attr(
            trial._trial_id, SYSTEM_FAIL_REASON, f"{reason}; not counted"
        )
        raise reason

    def trial_recorded(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback, called once the trial's final state is in the storage."""
        self.running = None

    def _interrupted(self, trial: optuna.Trial) -> None:
        """Record why the trial failed and queue its parameters again (it does not count)."""
        name = self.stop.signal_name
        stored = trial.storage.get_trial(trial._trial_id)
        params = {**stored.system_attrs.get("fixed_params", {}), **stored.params}
        trial.set_user_attr(INTERRUPTED_BY, name)
        reason = f"interrupted by {name}; not counted towards n_trials"
        if params:
            trial.study.enqueue_trial(
                params, user_attrs={RETRY_OF: trial.number}, skip_if_exists=False
            )
            reason += "; its parameters were queued again"
        trial.storage.set_trial_system_attr(trial._trial_id, SYSTEM_FAIL_REASON, reason)
        self.interrupted = (trial.number, bool(params))

    def _train(self, trial: optuna.Trial, assignment: Mapping[str, Any]) -> float:
        from lightning_o2nc.lightning.cli import build_run

        sweep = self.sweep
        config = sweep.trial_config(assignment)
        run_dir = trial_run_dir(self.logdir, sweep.study_name, trial.number)
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        trial.set_user_attr("tensorboard_run", str(run_dir.resolve()))
        trial.set_user_attr("config", str(config_path.resolve()))

        trainer_config = config.get("trainer") or {}
        overrides: dict[str, Any] = {"enable_progress_bar": False, "enable_model_summary": False}
        spawn = spawn_strategy(trainer_config)
        if spawn is not None:
            overrides["strategy"] = spawn
            rank_zero_info(
                f"trial {trial.number}: DDP through {spawn!r} (a sweep fits one Trainer per trial)"
            )

        logger = for_package(SweepTensorBoardLogger)(
            run_dir.parent,
            run_dir.name,
            {"trial/number": trial.number, **flatten_paths(assignment)},
        )
        guard = NonFiniteLossGuard()
        # Always attached: with the ``none`` pruner it still records the per-epoch curve.
        pruning = PyTorchLightningPruningCallback(trial, monitor=sweep.objective.monitor)
        members: list[Any] = [StopAtNextBatch(self.stop), guard, pruning]
        if self.progress is not None and spawn is None:
            members.append(EpochReporter(self.progress.epoch_done))
        if self.progress is not None:
            max_epochs = get_path(config, "trainer.max_epochs", default=None)
            self.progress.begin_trial(trial.number, max_epochs, trial.params)

        trainer, model, datamodule = build_run(
            config,
            extra_callbacks=[CallbackGroup(*members)],  # one callback to Lightning: see its doc
            logger=logger,
            trainer_overrides=overrides,
            save_config=False,  # config.yaml is written above, before the trial can fail
        )
        try:
            with self.stop.forwarding_to(lambda: _rank_processes(trainer)):
                trainer.fit(model, datamodule=datamodule)
            pruning.check_pruned()
        except optuna.TrialPruned:
            self._finish(trial, trainer, guard, logger, pruned=True)
            raise
        return self._finish(trial, trainer, guard, logger, pruned=False)

    def _finish(
        self,
        trial: optuna.Trial,
        trainer: Any,
        guard: NonFiniteLossGuard,
        logger: SweepTensorBoardLogger,
        *,
        pruned: bool,
    ) -> float:
        """Record epochs and divergence; return the objective, or raise why there is none."""
        monitor = self.sweep.objective.monitor
        steps = trial.storage.get_trial(trial._trial_id).intermediate_values
        trial.set_user_attr("epochs_trained", len(steps))
        metrics = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if isinstance(value, torch.Tensor) and value.numel() == 1
        }
        reason = guard.reason or _nonfinite_reason(metrics)
        if pruned and not logger.hparams_written:
            # Pruned inside fit (single process): the module's end-of-fit HParams never ran.
            logger.log_hyperparams(
                {},
                {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items() if k.startswith("val/")}
                or {"hp/pruned": 1.0},
            )
            logger.finalize("pruned")
        if reason is None and not pruned:
            value = metrics.get(monitor)
            if value is None:
                logged = sorted(name for name in metrics if "/" in name)
                raise RuntimeError(
                    f"the objective metric {monitor!r} was not logged by the model; "
                    f"logged metrics: {logged}"
                )
            if not math.isfinite(value):
                reason = f"objective {monitor} is {value}"
        if reason is not None:
            trial.set_user_attr(FAIL_REASON, reason)
            raise NonFiniteObjective(reason)
        return metrics[monitor]


def check_trial_config(sweep: SweepConfig, stop: StopRequest | None = None) -> None:
    """Build and fit one batch of the train config with the overrides and one sample of the space.

    Run once before any trial exists, so that a value no constructor, optimizer, schedule or
    data module accepts (``model.backbone: nope``) is refused before the study records anything.
    A conditional dimension is checked in every branch (one sample each), since a branch that no
    optimizer accepts would fail every trial that takes it. Multi-device trials are checked on
    one device (a DDP launch would only add start-up time).

    Raises:
        SweepConfigError: one line naming the train config and what was wrong with it.
        TrialInterrupted: when a stop was requested meanwhile.
    """
    stop = stop or StopRequest()
    grid = sweep.sampler.name == "grid"
    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=sweep.seed))
    for fixed in sweep.space.branch_probes(grid=grid):
        if fixed:
            probe.enqueue_trial(fixed)
        _check_one(sweep, sweep.space.suggest(probe.ask(), grid=grid), stop)


def _check_one(sweep: SweepConfig, assignment: Mapping[str, Any], stop: StopRequest) -> None:
    """Fit one batch of the train config with ``assignment`` (see :func:`check_trial_config`)."""
    from lightning_o2nc.lightning.cli import build_run

    config = sweep.trial_config(assignment)
    overrides: dict[str, Any] = {
        "fast_dev_run": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
    }
    if spawn_strategy(config.get("trainer") or {}) is not None:
        overrides.update(strategy="auto", devices=1, num_nodes=1)
    parser_errors = io.StringIO()
    try:
        # LightningCLI reports a value its parser rejects on stderr, then exits.
        with contextlib.redirect_stderr(parser_errors):
            trainer, model, datamodule = build_run(
                config,
                extra_callbacks=[StopAtNextBatch(stop)],
                logger=False,
                trainer_overrides=overrides,
            )
        trainer.fit(model, datamodule=datamodule)
    except TrialInterrupted:
        raise
    except SystemExit as error:
        lines = [line for line in parser_errors.getvalue().splitlines() if "error:" in line]
        reason = lines[-1].split("error:", 1)[1].strip() if lines else f"exit status {error.code}"
        raise SweepConfigError(_refusal(sweep, reason, assignment)) from error
    except Exception as error:
        # A ValueError says what is wrong by itself; other errors need their kind to make sense.
        reason = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
        raise SweepConfigError(_refusal(sweep, reason, assignment)) from error
    stop.raise_if_requested()


def _refusal(sweep: SweepConfig, reason: str, assignment: Mapping[str, Any]) -> str:
    reason = " ".join(line.strip() for line in reason.splitlines() if line.strip())
    branches = [
        f"{path}: {assignment[path]}" for path in sweep.space.branch_paths() if path in assignment
    ]
    where = f" (space branch {', '.join(branches)})" if branches else ""
    return f"train config {sweep.train_config_path} with the sweep's overrides{where}: {reason}"


def _rank_processes(trainer: Any) -> list[Any]:
    """The rank processes of a running ``ddp_spawn`` fit (none otherwise).

    Lightning's multiprocessing launcher keeps them in ``procs`` (checked with Lightning 2.6).
    """
    return list(getattr(trainer.strategy.launcher, "procs", None) or ())


def _nonfinite_reason(metrics: Mapping[str, float]) -> str | None:
    step = metrics.get(NonFiniteLossGuard.METRIC)
    if step is not None:
        where = f"step {int(step)}" if step >= 0 else "a step on another rank"
        return f"non-finite training loss (NaN or inf) at {where}"
    for name in ("train/loss", "train/loss_epoch", "val/loss"):
        value = metrics.get(name)
        if value is not None and not math.isfinite(value):
            return f"non-finite {name} ({value})"
    return None


def _json_safe(values: Mapping[str, Any]) -> dict[str, Any]:
    safe: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            safe[key] = _json_safe(value)
        elif isinstance(value, (str, int, float, bool)) or value is None:
            safe[key] = value
        else:
            safe[key] = repr(value)
    return safe
