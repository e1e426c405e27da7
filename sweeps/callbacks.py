"""Lightning callbacks a sweep adds to every trial's Trainer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from typing_extensions import override

# a Callback of both Lightning packages: a trial runs under either (``$O2NC_LIGHTNING_PACKAGE``)
from lightning_o2nc.lightning.packages import Callback

__all__ = ["EpochReporter", "NonFiniteLossGuard"]


class NonFiniteLossGuard(Callback):
    """Stop a trial whose training loss became NaN or infinite, and say why.

    Every training step folds ``isfinite(loss)`` into a flag on the device (no host sync). The
    flag is read, and agreed across DDP ranks, once before each validation and at each epoch end;
    when it is set the Trainer stops and :attr:`reason` names the first bad step.

    Register it before the pruning callback, so a NaN validation metric of the same epoch is
    recognised as a divergence rather than an ordinary pruning.
    """

    #: Set in ``trainer.callback_metrics`` (the first bad step) when the guard stops a run, so
    #: the main process of a ``ddp_spawn`` run learns it too.
    METRIC = "sweep/nonfinite_step"

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None
        self._first_bad_step: torch.Tensor | None = None

    @override
    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        loss = loss.detach()
        if self._first_bad_step is None:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss).all() & (self._first_bad_step < 0)
        step = torch.full_like(self._first_bad_step, trainer.global_step)
        self._first_bad_step = torch.where(bad, step, self._first_bad_step)

    def _check(self, trainer: Trainer) -> None:
        if self.reason is not None or trainer.sanity_checking:
            return
        step = -1 if self._first_bad_step is None else int(self._first_bad_step.item())
        if not trainer.strategy.reduce_boolean_decision(step >= 0, all=False):
            return
        where = f"step {step}" if step >= 0 else "a step on another rank"
        self.reason = (
            f"non-finite training loss (NaN or inf) at {where}, epoch {trainer.current_epoch}"
        )
        trainer.should_stop = True
        trainer.callback_metrics[self.METRIC] = torch.tensor(float(step))

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(trainer)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(trainer)


class EpochReporter(Callback):
    """Calls ``report(epoch, metrics)`` on global rank 0 after each training epoch.

    ``metrics`` holds the Trainer's latest logged scalars as Python floats.
    """

    def __init__(self, report: Callable[[int, dict[str, float]], None]) -> None:
        super().__init__()
        self._report = report

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if isinstance(value, torch.Tensor) and value.numel() == 1
        }
        self._report(trainer.current_epoch + 1, metrics)
