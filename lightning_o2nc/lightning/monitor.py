"""O2NCMonitor: the quantities of the O2NC theory, logged every ``log_every_n_steps``."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from ..optim import ExponentiatedO2NC

STATISTICS = ("update_norm", "grad_ema_norm", "iterate_variance", "stationarity_certificate")
GROUP_HYPERPARAMETERS = ("lr", "beta", "mu")


class O2NCMonitor(Callback):
    """Logs the drawn scalar s, ``||Delta||``, ``||m_hat||``, V, the certificate and lr/beta/mu.

    Tags (for the first ExponentiatedO2NC; further ones get ``o2nc/optimizer{i}/...``):
    ``o2nc/scale`` (the last s), ``o2nc/scale_mean`` (mean of the s drawn since the last log),
    ``o2nc/scale_histogram`` (TensorBoard histogram of those s), ``o2nc/update_norm``,
    ``o2nc/grad_ema_norm``, ``o2nc/iterate_variance`` and ``o2nc/stationarity_certificate``
    (with ``average=True``), ``o2nc/skipped_steps`` (with ``skip_nonfinite=True``) and
    ``o2nc/{lr,beta,mu}/group{j}``.

    Every optimizer step only appends the host float ``last_scale`` to a list; the statistics are
    computed on the device and read back with one transfer at logging steps, on global rank zero
    (DDP ranks hold identical optimizer states), with the same step axis as ``self.log``.

    Args:
        certificate_c: The constant c of the certificate ``||m_hat|| + c * V``.
        log_histogram: Also write a histogram of the scalars to TensorBoard loggers.
    """

    def __init__(self, certificate_c: float = 1.0, log_histogram: bool = True):
        if certificate_c < 0:
            raise ValueError(f"certificate_c must be >= 0, got {certificate_c}")
        self.certificate_c = certificate_c
        self.log_histogram = log_histogram
        self._scales: dict[int, list[float]] = {}
        self._last_step = -1

    @staticmethod
    def _o2nc_optimizers(trainer: pl.Trainer) -> list[tuple[str, ExponentiatedO2NC]]:
        found = [opt for opt in trainer.optimizers if isinstance(opt, ExponentiatedO2NC)]
        if len(found) == 1:
            return [("o2nc", found[0])]
        return [(f"o2nc/optimizer{i}", opt) for i, opt in enumerate(found)]

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._o2nc_optimizers(trainer):
            names = [type(opt).__name__ for opt in trainer.optimizers]
            rank_zero_warn(
                f"O2NCMonitor found no ExponentiatedO2NC among the optimizers {names}: it logs nothing"
            )
        self._scales = {}
        self._last_step = trainer.global_step

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.global_step == self._last_step:  # accumulating gradients: no step this batch
            return
        self._last_step = trainer.global_step
        optimizers = self._o2nc_optimizers(trainer)
        for _, opt in optimizers:
            self._scales.setdefault(id(opt), []).append(opt.last_scale)
        if not trainer._logger_connector.should_update_logs:
            return
        if trainer.is_global_zero and trainer.loggers:
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
            for prefix, opt in optimizers:
                self._log(trainer, prefix, opt, self._scales.get(id(opt), []), step)
        self._scales = {}

    def _log(
        self,
        trainer: pl.Trainer,
        prefix: str,
        opt: ExponentiatedO2NC,
        scales: list[float],
        step: int,
    ) -> None:
        statistics = opt.statistics(c=self.certificate_c)
        device_values = {name: statistics[name] for name in STATISTICS if name in statistics}
        if opt.skip_nonfinite:
            device_values["skipped_steps"] = opt.skipped_steps
        names = list(device_values)
        values = torch.stack([device_values[n].float() for n in names]).tolist() if names else []
        metrics = {f"{prefix}/{name}": value for name, value in zip(names, values, strict=True)}
        metrics[f"{prefix}/scale"] = opt.last_scale
        if scales:
            metrics[f"{prefix}/scale_mean"] = float(np.mean(scales))
        for j, group in enumerate(opt.param_groups):
            for name in GROUP_HYPERPARAMETERS:
                metrics[f"{prefix}/{name}/group{j}"] = float(group[name])
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if self.log_histogram and scales and isinstance(logger, TensorBoardLogger):
                logger.experiment.add_histogram(
                    f"{prefix}/scale_histogram", np.asarray(scales), global_step=step
                )
