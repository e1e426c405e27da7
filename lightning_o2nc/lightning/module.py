"""O2NCModule: a LightningModule around any classifier backbone, optimized through the factory."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from ..optim import ExponentiatedO2NC, build_optimizer, build_schedulers
from ..optim.factory import optimizer_spec
from ..optim.hyperparameters import HYPERPARAMETERS
from .averaged_iterate import AveragedIterate
from .backbones import BACKBONES, build_backbone
from .compat import EpochMeans, writes_training_metrics
from .errors import RunConfigError
from .monitor import O2NCMonitor
from .packages import Callback, lightning_class, twins
from .sharding import shard_blocks

LOSSES = {"cross_entropy": nn.CrossEntropyLoss}
# A nominal horizon for checking the optimizer's arguments before the Trainer knows the real one.
_CHECK_HORIZON = 1_000_000
#: Where O2NCModule's default is ``None`` (the choice follows ``optimizer``) instead of the
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
    """O2NCModule's optimizer arguments: the names, defaults and docs of the hyper-parameter table,
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
    """Every optimizer argument of O2NCModule, the given ones and the defaults of the rest."""
    parameters = optimizer_arguments.__signature__.parameters
    unknown = sorted(set(given) - set(parameters))
    if unknown:
        raise TypeError(
            f"O2NCModule got unexpected keyword argument(s) {', '.join(unknown)}; the optimizer's "
            f"are {', '.join(parameters)}"
        )
    return {name: given.get(name, parameter.default) for name, parameter in parameters.items()}


def _argument_doc(name: str) -> str:
    note = _MODULE_DEFAULTS.get(name)
    return f"{HYPERPARAMETERS[name].doc}; {note}" if note else HYPERPARAMETERS[name].doc


# LightningCLI (jsonargparse) follows O2NCModule's ``**hyperparameters`` into this function and
# reads its signature and docstring: ``--model.lr`` and friends come from the table.
optimizer_arguments.__signature__ = _hyperparameter_signature()
optimizer_arguments.__doc__ = "Every optimizer argument of O2NCModule.\n\nArgs:\n" + "".join(
    f"    {name}: {_argument_doc(name)}\n" for name in optimizer_arguments.__signature__.parameters
)


@lightning_class("LightningModule")  # one body; for_package() puts it on pytorch_lightning too
class O2NCModule:
    """Classification with Exponentiated O2NC, O2NC-AdamW or the SGDM / AdamW baselines.

    Logs ``train/loss``, ``train/acc`` (per step, at the steps that loggers write, the last of an
    epoch, and every step while a progress bar shows them), ``val/loss``, ``val/acc``,
    ``test/loss`` and ``test/acc`` (per epoch: their batch-size-weighted means, logged once per
    loop, see :class:`~.compat.EpochMeans`), all with ``sync_dist=True``. With ``monitor`` the
    :class:`O2NCMonitor` callback is added, and with ``average`` the :class:`AveragedIterate`
    callback, which adds ``val/acc_avg`` etc. at the averaged iterate x_bar. At the end of fit the
    hyper-parameters and the final validation metrics (``hp/val_acc``, ...) go to TensorBoard's
    HParams dashboard.

    A named backbone is built as soon as ``input_shape`` and ``num_classes`` are known: in
    ``__init__`` when both are given (the CLI links them from the data module), otherwise in
    :meth:`configure_model` from the data module the Trainer runs with, so
    ``Trainer().fit(O2NCModule(), datamodule=DigitsDataModule())`` works. A value given here and a
    different one declared by the data module is an error. Every argument, the optimizer's and its
    schedules' included, is checked here, before any training.

    Args:
        backbone: ``"mlp"``, ``"small_cnn"``, ``"resnet18_cifar"`` or an ``nn.Module`` that maps
            images to logits (in a config: ``class_path`` and ``init_args``).
        input_shape: ``(C, H, W)`` of one example for a named backbone; ``None``: the data
            module's ``input_shape``.
        num_classes: Number of classes for a named backbone; ``None``: the data module's
            ``num_classes``.
        loss: ``"cross_entropy"`` or a callable ``loss(logits, targets)`` (e.g. an ``nn.Module``).
        optimizer: Factory name (``lightning_o2nc.optim.factory.OPTIMIZERS``): ``"o2nc"``,
            ``"sgdm"`` (O2NC with ``scaling="none"``), ``"adamw"``, ``"o2nc_adamw"`` (AdamW with
            random scaling), ``"o2nc_uniform"`` or ``"o2nc_adamw_uniform"``. A hyper-parameter
            the optimizer does not take must stay at its default (``mu`` for the AdamW names,
            ``beta2`` and ``eps`` for the O2NC names).
        decay_bias_and_norm: Also decay biases and normalization weights.
        schedules: ``{field: {"shape": ..., "interval": "step" | "epoch", ...}}`` for the fields
            the optimizer may schedule: ``lr``, ``beta``, ``mu``, ``weight_decay`` (O2NC, SGDM);
            ``lr``, ``beta`` (``betas[0]``), ``beta2``, ``weight_decay`` (the AdamW names).
        certificate_c: The constant c of the stationarity certificate ``||m_hat|| + c * V``.
        monitor: Add the :class:`O2NCMonitor` callback.
        bn_update_batches: Training batches used to recompute BatchNorm statistics at x_bar.
        leave_averaged_in_model: Leave x_bar in the model at the end of fit.
        shard: Shard the backbone with FSDP2 in :meth:`configure_model`: ``fully_shard`` on each
            top-level block, then on the whole module, over the data-parallel mesh of
            ``Trainer(strategy=ModelParallelStrategy(...))`` (see docs/sharded-training.md).
        **hyperparameters: The optimizer's (``lr``, ``beta``, ``mu``, ``weight_decay``, ``beta2``,
            ``eps``, ``scaling``, ``seed``, ``average``, ...), keyword-only: the names, defaults and
            docs of
            ``lightning_o2nc.optim.hyperparameters`` (see :func:`optimizer_arguments`).
    """

    def __init__(
        self,
        # Callable rather than nn.Module: jsonargparse would list every nn.Module subclass in --help
        backbone: str | Callable[..., Any] = "mlp",
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        loss: str | Callable[..., Any] = "cross_entropy",
        optimizer: str = "o2nc",
        decay_bias_and_norm: bool = False,
        schedules: Mapping[str, Any] | None = None,
        certificate_c: float = 1.0,
        monitor: bool = True,
        bn_update_batches: int = 8,
        leave_averaged_in_model: bool = False,
        shard: bool = False,
        **hyperparameters: Any,
    ):
        super().__init__()
        hyperparameters = optimizer_arguments(**hyperparameters)  # save_hyperparameters reads it
        average = hyperparameters["average"]
        if average is None:
            average = optimizer_spec(optimizer).averages_by_default
        self.save_hyperparameters(
            ignore=[
                name
                for name, value in (("backbone", backbone), ("loss", loss))
                if not isinstance(value, str)
            ]
        )
        self.hparams["average"] = average
        if isinstance(backbone, str):
            if backbone not in BACKBONES:
                raise ValueError(f"Unknown backbone {backbone!r}; valid names: {sorted(BACKBONES)}")
        elif not isinstance(backbone, nn.Module):
            raise TypeError(
                f"Invalid backbone: {backbone!r}; expected one of {sorted(BACKBONES)} or an nn.Module"
            )
        self.backbone: nn.Module | None = None if isinstance(backbone, str) else backbone
        if isinstance(loss, str):
            if loss not in LOSSES:
                raise ValueError(f"Unknown loss {loss!r}; valid names: {sorted(LOSSES)}")
            loss = LOSSES[loss]()
        elif not callable(loss):
            raise TypeError(
                f"Invalid loss: {loss!r}; expected one of {sorted(LOSSES)} or a callable"
            )
        self.loss_fn = loss
        self._epoch_means = EpochMeans()
        self._optimizer([nn.Parameter(torch.zeros(1))], _CHECK_HORIZON, _CHECK_HORIZON)
        if self.backbone is None and input_shape is not None and num_classes is not None:
            self.backbone = build_backbone(backbone, input_shape, num_classes)

    @override
    def configure_model(self) -> None:
        """Builds a named backbone from the data module's ``input_shape`` and ``num_classes``.

        Lightning calls this after the data module's ``setup`` in every stage. Values given to
        ``__init__`` take precedence, and the data module must not declare different ones. The
        resolved values go into ``hparams``, so checkpoints load with
        :meth:`load_from_checkpoint` alone.
        """
        try:
            datamodule = self.trainer.datamodule
        except RuntimeError:  # called by hand, without a Trainer
            datamodule = None
        for name in ("input_shape", "num_classes"):
            given, declared = self.hparams[name], getattr(datamodule, name, None) or None
            if name == "input_shape":
                given = None if given is None else tuple(given)
                declared = None if declared is None else tuple(declared)
            if given is not None and declared is not None and given != declared:
                raise RunConfigError(
                    f"O2NCModule({name}={given!r}) does not match the data module's "
                    f"{type(datamodule).__name__}.{name} = {declared!r}"
                )
            if given is None:
                self.hparams[name] = declared
        if self.backbone is not None:
            if self.hparams.get("shard"):
                shard_blocks(self, self.backbone)
            return
        if self.hparams.input_shape is None or self.hparams.num_classes is None:
            raise RunConfigError(
                f"backbone={self.hparams.backbone!r} needs input_shape and num_classes: pass them to "
                "O2NCModule, or fit with a datamodule that declares them (e.g. DigitsDataModule)"
            )
        self.backbone = build_backbone(
            self.hparams.backbone, self.hparams.input_shape, self.hparams.num_classes
        )
        if self.hparams.get("shard"):
            shard_blocks(self, self.backbone)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone is None:
            raise RuntimeError(
                f"backbone={self.hparams.backbone!r} is built in configure_model() (by the Trainer, "
                "from its data module); pass input_shape and num_classes to use the module before that"
            )
        return self.backbone(x)

    def _evaluate(
        self, batch: Any, stage: str, batch_idx: int, on_step: bool, log: bool = True
    ) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss_fn(logits, y)
        if not log:
            return loss
        accuracy = (logits.argmax(dim=-1) == y).float().mean()
        metrics = {f"{stage}/loss": loss, f"{stage}/acc": accuracy}
        options = {"sync_dist": True, "prog_bar": stage != "test"}
        if on_step:
            self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(y), **options)
        else:  # the epoch means, logged once at the last batch of the loop
            self._epoch_means.log(self, metrics, batch_idx, len(y), **options)
        return loss

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        read = self._train_metrics_read(batch_idx)
        return self._evaluate(batch, "train", batch_idx, on_step=True, log=read)

    def _train_metrics_read(self, batch_idx: int) -> bool:
        """Whether anything reads this batch's ``train/loss`` and ``train/acc``.

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
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val", batch_idx, on_step=False)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test", batch_idx, on_step=False)

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
        callbacks: list[Callback] = []
        statistics = optimizer_spec(self.hparams.optimizer).keeps_statistics or self.hparams.average
        if self.hparams.monitor and statistics:
            callbacks.append(O2NCMonitor(certificate_c=self.hparams.certificate_c))
        if self.hparams.average:
            callbacks.append(
                AveragedIterate(
                    bn_update_batches=self.hparams.bn_update_batches,
                    leave_averaged_in_model=self.hparams.leave_averaged_in_model,
                )
            )
        return callbacks

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
