"""One trial: the train config plus the trial's values, handed to Lightning, one value back.

No training loop lives here: :func:`lightning_o2nc.lightning.cli.build_run` builds the Trainer,
module and data module from the config, and ``trainer.fit`` trains them. This module adds what a
sweep needs around that: a TensorBoard run per trial, per-epoch reports for the pruner, a stop
on a non-finite loss, and the HParams entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from optuna_integration import PyTorchLightningPruningCallback
from typing_extensions import override

from .callbacks import EpochReporter, NonFiniteLossGuard
from .config import SweepConfig
from .errors import FAIL_REASON, SweepConfigError
from .paths import flatten_paths, get_path
from .progress import SweepProgress

__all__ = ["NonFiniteObjective", "SweepObjective", "SweepTensorBoardLogger", "trial_run_dir"]

#: Strategies whose launcher re-runs the command and have no spawn-based twin.
_RELAUNCHING = ("fsdp", "deepspeed")
_SPAWN_EQUIVALENT = {
    "ddp": "ddp_spawn",
    "ddp_find_unused_parameters_true": "ddp_spawn_find_unused_parameters_true",
    "ddp_find_unused_parameters_false": "ddp_spawn_find_unused_parameters_false",
}


class NonFiniteObjective(RuntimeError):
    """A trial diverged (NaN/inf loss or objective). The study records it as failed and goes on."""


def trial_run_dir(logdir: Path, study_name: str, number: int) -> Path:
    """``<logdir>/<study>/trial_<number>``: the trial's TensorBoard run and its config."""
    return Path(logdir) / study_name / f"trial_{number}"


class SweepTensorBoardLogger(TensorBoardLogger):
    """A TensorBoard run whose HParams entry also lists the trial's searched values.

    The module sends its hyper-parameters with the final metrics at the end of fit; this logger
    adds ``extra_hparams`` (the trial number and every searched config path) to that entry, so
    the HParams dashboard compares trials on exactly the dimensions of the sweep.
    """

    def __init__(self, save_dir: Path, name: str, extra_hparams: Mapping[str, Any]) -> None:
        super().__init__(save_dir=str(save_dir), name=name, version="", default_hp_metric=False)
        self.extra_hparams = dict(extra_hparams)
        self.hparams_written = False

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


def spawn_strategy(trainer_config: Mapping[str, Any]) -> str | None:
    """The spawn-based twin of a script-relaunching DDP strategy, when the trial needs one.

    Lightning's ``ddp`` launcher re-runs the command for ranks 1..N-1 and can do so only once per
    process, but a sweep worker fits one Trainer per trial. ``ddp_spawn`` starts fresh rank
    processes for every fit (this is what Optuna's own DDP example uses) and the main process
    keeps the trial, so every rank trains with the same parameters.
    """
    strategy = trainer_config.get("strategy", "auto")
    if not isinstance(strategy, str):
        return None
    if strategy in _SPAWN_EQUIVALENT:
        return _SPAWN_EQUIVALENT[strategy]
    if strategy != "auto" and not strategy.startswith(_RELAUNCHING):
        return None
    devices = trainer_config.get("devices", "auto")
    nodes = trainer_config.get("num_nodes", 1)
    accelerator = trainer_config.get("accelerator", "auto")
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, int) and devices > 0:
        count = devices
    elif devices in (-1, "-1", "auto") and accelerator in ("auto", "gpu", "cuda"):
        count = torch.cuda.device_count()  # Lightning takes every visible GPU
    elif isinstance(devices, str) and devices.isdigit():
        count = int(devices)
    else:
        count = 1
    if count * (nodes if isinstance(nodes, int) else 1) <= 1:
        return None
    if strategy != "auto":
        raise SweepConfigError(
            f"trainer.strategy: {strategy!r} relaunches the script for its ranks, which works "
            "once per process, but a sweep worker fits one Trainer per trial; use `ddp` (run as "
            "ddp_spawn) for multi-device trials, or one device per trial and several workers"
        )
    return "ddp_spawn"


class SweepObjective:
    """The callable handed to ``study.optimize``: runs one trial, returns its objective value.

    Args:
        sweep: the validated sweep definition.
        logdir: root of the TensorBoard runs (``<logdir>/<study>/trial_<n>``).
        progress: the live display, or ``None``.
    """

    def __init__(
        self, sweep: SweepConfig, logdir: Path, progress: SweepProgress | None = None
    ) -> None:
        self.sweep = sweep
        self.logdir = Path(logdir)
        self.progress = progress
        self.grid = sweep.sampler.name == "grid"
        self.trials_run = 0

    def __call__(self, trial: optuna.Trial) -> float:
        from lightning_o2nc.lightning.cli import build_run

        self.trials_run += 1
        sweep = self.sweep
        assignment = sweep.space.suggest(trial, grid=self.grid)
        config = sweep.trial_config(assignment)
        run_dir = trial_run_dir(self.logdir, sweep.study_name, trial.number)
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        trial.set_user_attr("tensorboard_run", str(run_dir.resolve()))
        trial.set_user_attr("config", str(config_path.resolve()))
        trial.set_user_attr("values", _json_safe(assignment))

        trainer_config = config.get("trainer") or {}
        overrides: dict[str, Any] = {"enable_progress_bar": False, "enable_model_summary": False}
        spawn = spawn_strategy(trainer_config)
        if spawn is not None:
            overrides["strategy"] = spawn
            rank_zero_info(
                f"trial {trial.number}: DDP through {spawn!r} (a sweep fits one Trainer per trial)"
            )

        logger = SweepTensorBoardLogger(
            run_dir.parent,
            run_dir.name,
            {"trial/number": trial.number, **flatten_paths(assignment)},
        )
        guard = NonFiniteLossGuard()
        # Always attached: with the ``none`` pruner it still records the per-epoch curve.
        pruning = PyTorchLightningPruningCallback(trial, monitor=sweep.objective.monitor)
        callbacks: list[Any] = [guard, pruning]
        if self.progress is not None and spawn is None:
            callbacks.append(EpochReporter(self.progress.epoch_done))
        if self.progress is not None:
            max_epochs = get_path(config, "trainer.max_epochs", default=None)
            self.progress.begin_trial(trial.number, max_epochs, trial.params)

        trainer, model, datamodule = build_run(
            config, extra_callbacks=callbacks, logger=logger, trainer_overrides=overrides
        )
        try:
            trainer.fit(model, datamodule=datamodule)
            pruning.check_pruned()
        except optuna.TrialPruned:
            self._finish(trial, trainer, guard, logger, pruned=True)
            raise
        except KeyboardInterrupt:
            # Interrupted by the user: queue the same parameters so the next run retries them.
            trial.study.enqueue_trial(
                trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False
            )
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
