"""O2NCModule: a LightningModule around any classifier backbone, optimized through the factory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from typing_extensions import override

from ..optim import build_optimizer
from .averaged_iterate import AveragedIterate
from .backbones import build_backbone
from .monitor import O2NCMonitor

LOSSES = {"cross_entropy": nn.CrossEntropyLoss}
AVERAGING_OPTIMIZERS = ("o2nc", "sgdm")


class O2NCModule(pl.LightningModule):
    """Classification with Exponentiated O2NC (or the SGDM / AdamW baselines) in one module.

    Logs ``train/loss``, ``train/acc`` (per step), ``val/loss``, ``val/acc``, ``test/loss`` and
    ``test/acc`` (per epoch), all with ``sync_dist=True``. With ``monitor`` the
    :class:`O2NCMonitor` callback is added, and with ``average`` the :class:`AveragedIterate`
    callback, which adds ``val/acc_avg`` etc. at the averaged iterate x_bar. At the end of fit the
    hyper-parameters and the final validation metrics (``hp/val_acc``, ...) go to TensorBoard's
    HParams dashboard.

    Args:
        backbone: ``"mlp"``, ``"small_cnn"``, ``"resnet18_cifar"`` or an ``nn.Module`` that maps
            images to logits.
        input_shape: ``(C, H, W)`` of one example, needed by a named backbone (the CLI links it
            from the data module).
        num_classes: Number of classes, needed by a named backbone (linked by the CLI).
        loss: ``"cross_entropy"`` or an ``nn.Module`` ``loss(logits, targets)``.
        optimizer: Factory name: ``"o2nc"``, ``"sgdm"`` (O2NC with ``scaling="none"``) or ``"adamw"``.
        lr: eta, the step size.
        beta: The momentum.
        mu: Implicit decay of the update, ``zeta = beta / (1 + lr * mu)``.
        weight_decay: L2 penalty.
        decay_bias_and_norm: Also decay biases and normalization weights.
        scaling: ``"exponential"``, ``"uniform"`` or ``"none"``; ``None`` is the optimizer's default
            (exponential for o2nc, none for sgdm).
        seed: Seed of the scalar's generator (``None``: agreed across DDP ranks).
        average: Keep the averaged iterate x_bar and evaluate at it; ``None`` means on for o2nc and
            sgdm, off for adamw.
        skip_nonfinite: Skip steps whose gradients hold NaN/inf.
        foreach: Multi-tensor kernels (``None``: the optimizer's choice).
        schedules: ``{"lr" | "beta" | "mu": {"shape": ..., "interval": "step" | "epoch", ...}}``.
        certificate_c: The constant c of the stationarity certificate ``||m_hat|| + c * V``.
        monitor: Add the :class:`O2NCMonitor` callback.
        bn_update_batches: Training batches used to recompute BatchNorm statistics at x_bar.
        leave_averaged_in_model: Leave x_bar in the model at the end of fit.
    """

    def __init__(
        self,
        backbone: str | nn.Module = "mlp",
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        loss: str | nn.Module = "cross_entropy",
        optimizer: str = "o2nc",
        lr: float = 0.05,
        beta: float = 0.9,
        mu: float = 0.0,
        weight_decay: float = 0.0,
        decay_bias_and_norm: bool = False,
        scaling: str | None = None,
        seed: int | None = None,
        average: bool | None = None,
        skip_nonfinite: bool = False,
        foreach: bool | None = None,
        schedules: Mapping[str, Any] | None = None,
        certificate_c: float = 1.0,
        monitor: bool = True,
        bn_update_batches: int = 8,
        leave_averaged_in_model: bool = False,
    ):
        super().__init__()
        if average is None:
            average = optimizer in AVERAGING_OPTIMIZERS
        if average and optimizer not in AVERAGING_OPTIMIZERS:
            raise ValueError(
                f"average=True needs an optimizer that keeps x_bar ({', '.join(AVERAGING_OPTIMIZERS)}), "
                f"got optimizer={optimizer!r}; set average to false"
            )
        self.save_hyperparameters(
            ignore=[
                name
                for name, value in (("backbone", backbone), ("loss", loss))
                if isinstance(value, nn.Module)
            ]
        )
        self.hparams["average"] = average
        if isinstance(backbone, str):
            if input_shape is None or num_classes is None:
                raise ValueError(
                    f"backbone={backbone!r} needs input_shape and num_classes (the CLI links them from "
                    "the data module; in Python pass e.g. input_shape=dm.input_shape, num_classes=dm.num_classes)"
                )
            backbone = build_backbone(backbone, input_shape, num_classes)
        self.backbone = backbone
        if isinstance(loss, str):
            if loss not in LOSSES:
                raise ValueError(f"Unknown loss {loss!r}; valid names: {sorted(LOSSES)}")
            loss = LOSSES[loss]()
        self.loss_fn = loss

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def _evaluate(self, batch: Any, stage: str, on_step: bool) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss_fn(logits, y)
        accuracy = (logits.argmax(dim=-1) == y).float().mean()
        self.log_dict(
            {f"{stage}/loss": loss, f"{stage}/acc": accuracy},
            on_step=on_step,
            on_epoch=not on_step,
            sync_dist=True,
            batch_size=len(y),
            prog_bar=stage != "test",
        )
        return loss

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "train", on_step=True)

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val", on_step=False)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test", on_step=False)

    @override
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        options: dict[str, Any] = {"foreach": hp.foreach}
        if hp.optimizer in AVERAGING_OPTIMIZERS:
            options.update(seed=hp.seed, average=hp.average, skip_nonfinite=hp.skip_nonfinite)
            if hp.scaling is not None:
                options["scaling"] = hp.scaling
        schedules = dict(hp.schedules) if hp.schedules else None
        max_epochs = self.trainer.max_epochs
        return build_optimizer(
            self,
            name=hp.optimizer,
            lr=hp.lr,
            beta=hp.beta,
            mu=hp.mu,
            weight_decay=hp.weight_decay,
            decay_bias_and_norm=hp.decay_bias_and_norm,
            schedules=schedules,
            total_steps=self.trainer.estimated_stepping_batches if schedules else None,
            total_epochs=max_epochs if schedules and max_epochs and max_epochs > 0 else None,
            **options,
        )

    @override
    def configure_callbacks(self) -> list[Callback]:
        callbacks: list[Callback] = []
        if self.hparams.monitor and self.hparams.optimizer in AVERAGING_OPTIMIZERS:
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
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(self.hparams, metrics)
