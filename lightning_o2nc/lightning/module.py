"""O2NCModule: a LightningModule around any classifier backbone, optimized through the factory."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from .backbones import BACKBONES, build_backbone
from .compat import EpochMeans
from .errors import RunConfigError
from .optimized_module import OptimizedModule, optimizer_arguments, resolve_average
from .packages import lightning_class
from .sharding import shard_blocks

LOSSES = {"cross_entropy": nn.CrossEntropyLoss}


@lightning_class("LightningModule")  # one body; for_package() puts it on pytorch_lightning too
class O2NCModule(OptimizedModule):
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
        # a plain read: jsonargparse follows **hyperparameters only through calls that pass it whole
        average = hyperparameters["average"]
        average = resolve_average(optimizer, average)
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
        self.check_optimizer()
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

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val", batch_idx, on_step=False)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test", batch_idx, on_step=False)
