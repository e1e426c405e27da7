"""The optimizer wiring every LightningModule of this project shares, written once.

:class:`OptimizedModule` is a mixin for a ``LightningModule`` body: it builds the factory's
optimizer and its schedules from ``hparams`` (``configure_optimizers``), adds the
:class:`O2NCMonitor` and :class:`AveragedIterate` callbacks (``configure_callbacks``), decides
when the per-step training metrics are worth logging, and sends the final validation metrics to
TensorBoard's HParams dashboard. :class:`~.module.O2NCModule` (classification) and
:class:`~.language_module.CharLanguageModule` (character-level language modelling) both derive
from it, so an optimizer name, hyper-parameter or schedule that one module accepts, the other
accepts too.

The optimizer's arguments of a module are the hyper-parameter table's
(:mod:`lightning_o2nc.optim.hyperparameters`), taken as ``**hyperparameters`` and resolved by
:func:`optimizer_arguments`; LightningCLI (jsonargparse) follows ``**hyperparameters`` into that
function's signature, so ``--model.lr`` and friends exist for every module.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from ..optim import ExponentiatedO2NC, build_optimizer, build_schedulers
from ..optim.factory import optimizer_spec
from ..optim.hyperparameters import HYPERPARAMETERS
from .averaged_iterate import AveragedIterate
from .compat import writes_training_metrics
from .errors import RunConfigError
from .monitor import O2NCMonitor
from .packages import Callback, twins
from .process_group import EndsProcessGroupAtExit

# A nominal horizon for checking the optimizer's arguments before the Trainer knows the real one.
_CHECK_HORIZON = 1_000_000
#: Where a module's default is ``None`` (the choice follows ``optimizer``) instead of the
#: table's, and what ``None`` means there.
_MODULE_DEFAULTS = {
    "scaling": "None: the optimizer name's (exponential for o2nc and o2nc_adamw, uniform for "
    "the _uniform names, none for sgdm and adamw)",
    "average": "the module also evaluates at x_bar (adamw: the plain AdamW trajectory wrapped "
    "as RandomScaling(scaling='none', average=True)); None: on for every optimizer but adamw",
}
#: The optimizer's own options that a module minimizing its loss does not take.
_NOT_MODULE_ARGUMENTS = ("maximize",)


def _hyperparameter_signature() -> inspect.Signature:
    """A module's optimizer arguments: the names, defaults and docs of the hyper-parameter table,
    typed as ``ExponentiatedO2NC`` types them (AdamW's own numbers, beta2 and eps, as floats)."""
    hints = typing.get_type_hints(ExponentiatedO2NC.__init__)
    parameters = []
    for name, fact in HYPERPARAMETERS.items():
        if name in _NOT_MODULE_ARGUMENTS:
            continue
        default = fact.default
        annotation = hints.get(name, float if fact.numeric else Any)  # beta2, eps: AdamW's
        if name in _MODULE_DEFAULTS:
            default, annotation = None, annotation | None
        parameters.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
            )
        )
    return inspect.Signature(parameters)


def optimizer_arguments(**given: Any) -> dict[str, Any]:
    """Every optimizer argument of a module, the given ones and the defaults of the rest."""
    parameters = optimizer_arguments.__signature__.parameters
    unknown = sorted(set(given) - set(parameters))
    if unknown:
        raise TypeError(
            f"got unexpected keyword argument(s) {', '.join(unknown)}; the optimizer's "
            f"are {', '.join(parameters)}"
        )
    return {name: given.get(name, parameter.default) for name, parameter in parameters.items()}


def _argument_doc(name: str) -> str:
    note = _MODULE_DEFAULTS.get(name)
    return f"{HYPERPARAMETERS[name].doc}; {note}" if note else HYPERPARAMETERS[name].doc


# LightningCLI (jsonargparse) follows a module's ``**hyperparameters`` into this function and
# reads its signature and docstring: ``--model.lr`` and friends come from the table.
optimizer_arguments.__signature__ = _hyperparameter_signature()
optimizer_arguments.__doc__ = "Every optimizer argument of a module.\n\nArgs:\n" + "".join(
    f"    {name}: {_argument_doc(name)}\n" for name in optimizer_arguments.__signature__.parameters
)


def resolve_average(optimizer: str, average: bool | None) -> bool:
    """``average=None`` follows the optimizer name (the registry's ``averages_by_default``)."""
    if average is None:
        return optimizer_spec(optimizer).averages_by_default
    return bool(average)


class OptimizedModule:
    """Mixin of a LightningModule body whose ``hparams`` hold ``optimizer``, the table's
    hyper-parameters, ``decay_bias_and_norm``, ``schedules``, ``certificate_c``, ``monitor``,
    ``average`` and ``leave_averaged_in_model`` (and optionally ``bn_update_batches``).

    Call :meth:`check_optimizer` at the end of ``__init__``: it builds the optimizer and its
    schedules once over a dummy parameter, so a bad value stops the run before any training.
    """

    def check_optimizer(self) -> None:
        """Raise the factory's error for a bad optimizer argument or schedule, before training."""
        self._optimizer([nn.Parameter(torch.zeros(1))], _CHECK_HORIZON, _CHECK_HORIZON)

    def _train_metrics_read(self, batch_idx: int) -> bool:
        """Whether anything reads this batch's per-step training metrics.

        One ``self.log`` costs about 0.3 ms on a CPU (Lightning's result collection), as much as
        a whole step of a small model, so the per-step training metrics are logged only where they
        are read: at every batch while a progress bar shows them (and under ``fast_dev_run`` or
        manual optimization), else at the batches whose metrics the loggers write (the rule of
        :func:`~.compat.writes_training_metrics`, shared with the monitor's step axis) and at the
        last batch of each epoch, for callbacks that monitor them at epoch end. Every input of the
        decision is the same on all DDP ranks, so the ``sync_dist`` reduction stays collective.
        """
        try:
            trainer = self.trainer
        except RuntimeError:  # called outside a Trainer
            return True
        if trainer.progress_bar_callback is not None or not self.automatic_optimization:
            return True
        # before the optimizer step, global_step is the axis step of this batch's metrics
        logged = writes_training_metrics(trainer, trainer.global_step)
        return logged or batch_idx + 1 == trainer.num_training_batches

    @override
    def configure_optimizers(self) -> Any:
        if not self.hparams.schedules:  # estimated_stepping_batches loads the train dataloader
            return self._optimizer(self, total_steps=None, total_epochs=None)
        max_epochs = self.trainer.max_epochs
        try:
            return self._optimizer(
                self,
                total_steps=self.trainer.estimated_stepping_batches,
                total_epochs=max_epochs if max_epochs and max_epochs > 0 else None,
            )
        except (ValueError, TypeError) as error:  # __init__ checked all but the run's horizon
            raise RunConfigError(str(error), "model.schedules") from error

    def _optimizer(
        self,
        params: nn.Module | list[nn.Parameter],
        total_steps: float | None,
        total_epochs: int | None,
    ) -> Any:
        """The factory's optimizer (and schedules) over ``params``; ``__init__`` checks with it."""
        hp = self.hparams
        spec = optimizer_spec(hp.optimizer)
        # the table's hyper-parameters this optimizer takes; None defers to the optimizer's default
        accepted = set(inspect.signature(build_optimizer).parameters) | set(spec.options)
        parameters = optimizer_arguments.__signature__.parameters
        for name, parameter in parameters.items():
            if name not in accepted and hp[name] != parameter.default:
                raise ValueError(
                    f"Invalid {name} for optimizer {hp.optimizer!r}: {hp[name]!r}; "
                    f"{hp.optimizer} has no {name}, leave it at {parameter.default!r}"
                )
        hyperparameters = {
            name: hp[name]
            for name in parameters
            if name in accepted and not (name in _MODULE_DEFAULTS and hp[name] is None)
        }
        optimizer = build_optimizer(
            params, name=hp.optimizer, decay_bias_and_norm=hp.decay_bias_and_norm, **hyperparameters
        )
        schedules = dict(hp.schedules) if hp.schedules else None
        schedulers = build_schedulers(optimizer, schedules, total_steps, total_epochs, hp.optimizer)
        return [optimizer], schedulers

    @override
    def configure_callbacks(self) -> list[Callback]:
        """The monitor and the averaged-iterate callback (with neither, a bare
        ``EndsProcessGroupAtExit``), built once per module: Lightning asks again for every
        ``fit``/``validate``/``test``, and a fresh ``AveragedIterate`` would have lost the
        BatchNorm statistics at x_bar that fit recomputed."""
        if getattr(self, "_own_callbacks", None) is None:
            self._own_callbacks = self._build_callbacks()
        return self._own_callbacks

    def _build_callbacks(self) -> list[Callback]:
        callbacks: list[Callback] = []
        statistics = optimizer_spec(self.hparams.optimizer).keeps_statistics or self.hparams.average
        if self.hparams.monitor and statistics:
            callbacks.append(O2NCMonitor(certificate_c=self.hparams.certificate_c))
        if self.hparams.average:
            callbacks.append(
                AveragedIterate(
                    bn_update_batches=self.hparams.get("bn_update_batches", 8),
                    leave_averaged_in_model=self.hparams.leave_averaged_in_model,
                )
            )
        return callbacks or [EndsProcessGroupAtExit()]

    @override
    def on_fit_end(self) -> None:
        """Sends the hyper-parameters with the final validation metrics to the HParams dashboard."""
        metrics = {
            "hp/" + name.replace("/", "_"): float(value)
            for name, value in self.trainer.callback_metrics.items()
            if name.startswith("val/")
        }
        if not metrics:
            return
        for logger in self.loggers:
            if isinstance(logger, twins("loggers.TensorBoardLogger")):
                logger.log_hyperparams(self.hparams, metrics)
