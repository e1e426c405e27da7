"""NonFiniteLossGuard names the first step whose loss was NaN, however many windows it folded."""

from __future__ import annotations

import logging

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_o2nc.sweeps.callbacks import NonFiniteLossGuard
from tests.train_configs import QUIET_CPU


class LossTurnsNaN(LightningModule):
    """A linear model whose loss is NaN from global step ``bad_step`` on (never, when None)."""

    def __init__(self, bad_step: int | None):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.bad_step = bad_step

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        if self.bad_step is not None and self.global_step >= self.bad_step:
            loss = loss * float("nan")
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(bad_step: int | None, window: int) -> tuple[NonFiniteLossGuard, Trainer]:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    guard = NonFiniteLossGuard()
    guard.WINDOW = window
    data = DataLoader(TensorDataset(torch.randn(32, 4)), batch_size=4)  # 8 steps per epoch
    trainer = Trainer(max_epochs=4, num_sanity_val_steps=0, callbacks=[guard], **QUIET_CPU)
    trainer.fit(LossTurnsNaN(bad_step), train_dataloaders=data, val_dataloaders=data)
    return guard, trainer


@pytest.mark.filterwarnings("ignore:.*does not have many workers.*")
@pytest.mark.parametrize("window", [1, 3, 64])
def test_the_guard_stops_at_the_epoch_of_the_first_nan_and_names_its_step(window):
    guard, trainer = _fit(bad_step=13, window=window)
    # the guard counts the optimizer step that consumed the loss: trainer.global_step after it
    assert guard.reason == "non-finite training loss (NaN or inf) at step 14, epoch 1"
    assert trainer.current_epoch == 2  # stopped after epoch 1 instead of running all 4
    assert trainer.callback_metrics[NonFiniteLossGuard.METRIC] == 14


@pytest.mark.filterwarnings("ignore:.*does not have many workers.*")
def test_a_finite_run_is_left_alone():
    guard, trainer = _fit(bad_step=None, window=3)
    assert guard.reason is None
    assert trainer.current_epoch == 4
