"""O2NCModule logs its per-step training metrics only at the batches where something reads them.

A ``self.log`` call costs about as much as a training step of a small model, so logging values
that no logger writes and no progress bar shows made every sweep trial slower
(``benchmarks/experiments/sweep_scaling.py`` measures the per-trial cost).
"""

from __future__ import annotations

import pytest
from lightning.pytorch import Trainer

from lightning_o2nc.lightning import O2NCModule


class CountingModule(O2NCModule):
    """Records the global step of every ``train/loss`` that reaches ``self.log``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.train_log_steps: list[int] = []

    def log(self, name, value, *args, **kwargs):
        if name == "train/loss":
            self.train_log_steps.append(self.trainer.global_step)
        return super().log(name, value, *args, **kwargs)


def _fit(make_data, trainer_kwargs, **trainer_options) -> tuple[CountingModule, Trainer]:
    model = CountingModule(backbone="mlp", input_shape=(1, 8, 8), num_classes=4, lr=0.1, seed=0)
    trainer = Trainer(**{**trainer_kwargs, "max_epochs": 2, **trainer_options})
    trainer.fit(model, datamodule=make_data())
    return model, trainer


def test_without_a_progress_bar_train_metrics_are_logged_where_loggers_write_and_at_epoch_ends(
    make_data, trainer_kwargs
):
    model, trainer = _fit(make_data, trainer_kwargs, log_every_n_steps=4)
    assert trainer.num_training_batches == 6
    # written by loggers after optimizer steps 4, 8, 12 (global steps 3, 7, 11); epoch ends at 5, 11
    assert model.train_log_steps == [3, 5, 7, 11]
    assert {"train/loss", "train/acc"} <= set(trainer.callback_metrics)


def test_a_progress_bar_or_fast_dev_run_gets_train_metrics_at_every_step(make_data, trainer_kwargs):
    model, _ = _fit(make_data, trainer_kwargs, log_every_n_steps=4, enable_progress_bar=True)
    assert model.train_log_steps == list(range(12))
    model, _ = _fit(make_data, trainer_kwargs, fast_dev_run=3)
    assert model.train_log_steps == [0, 1, 2]


@pytest.mark.parametrize("every", [0, 50])
def test_train_metrics_reach_epoch_end_callbacks_whatever_the_logging_interval(
    make_data, trainer_kwargs, every
):
    model, trainer = _fit(make_data, trainer_kwargs, log_every_n_steps=every)
    assert model.train_log_steps == [5, 11]
    assert "train/loss" in trainer.callback_metrics
