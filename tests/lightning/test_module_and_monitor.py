import math

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from tbparse import SummaryReader

from lightning_o2nc import ExponentiatedO2NC
from lightning_o2nc.lightning import AveragedIterate, O2NCModule, O2NCMonitor


class RecordScales(Callback):
    def __init__(self):
        self.scales = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.scales.append(trainer.optimizers[0].last_scale)


def test_o2nc_module_learns_and_logs_synced_metrics_under_the_contract_names(
    make_model, make_data, trainer_kwargs
):
    model = make_model()
    trainer = Trainer(**{**trainer_kwargs, "max_epochs": 4})
    trainer.fit(model, datamodule=make_data())
    fit_metrics = dict(trainer.callback_metrics)
    trainer.test(model, datamodule=make_data(), verbose=False)
    metrics = {**fit_metrics, **trainer.callback_metrics}
    for name in (
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/loss_avg",
        "val/acc_avg",
        "test/acc",
        "test/acc_avg",
    ):
        assert name in metrics, name
    assert metrics["val/acc"] > 0.9
    assert metrics["test/acc_avg"] > 0.9
    assert metrics["test/loss_avg"] != metrics["test/loss"]  # x_bar is a different point


def test_schedules_use_the_trainers_total_steps(make_model, make_data, trainer_kwargs):
    model = make_model(schedules={"lr": {"shape": "linear", "end_factor": 0.0}})
    trainer = Trainer(**{**trainer_kwargs, "max_epochs": 3})
    trainer.fit(model, datamodule=make_data())
    total = trainer.estimated_stepping_batches
    assert trainer.global_step == total == 18
    group_lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert group_lr == pytest.approx(0.1 * (1 - total / total), abs=1e-12)


def test_o2nc_callbacks_are_on_by_default_and_can_be_turned_off(make_model):
    assert sorted(type(c).__name__ for c in make_model().configure_callbacks()) == [
        "AveragedIterate",
        "O2NCMonitor",
    ]
    # without either, a bare callback still ends a multi-process run's group at exit
    (only,) = make_model(monitor=False, average=False).configure_callbacks()
    assert type(only).__name__ == "EndsProcessGroupAtExit"
    assert make_model(optimizer="adamw").hparams.average is False


def test_bad_module_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="input_shape and num_classes"):
        O2NCModule("mlp").configure_model()  # no Trainer and no data module to build it from
    with pytest.raises(ValueError, match="Invalid beta2 for optimizer 'o2nc': 0.99; o2nc has no"):
        O2NCModule("mlp", input_shape=(1, 8, 8), num_classes=4, optimizer="o2nc", beta2=0.99)
    with pytest.raises(ValueError, match="AdamW has no mu"):
        O2NCModule("mlp", input_shape=(1, 8, 8), num_classes=4, optimizer="o2nc_adamw", mu=0.1)
    with pytest.raises(ValueError, match="'adamw' means scaling='none'.*o2nc_adamw"):
        O2NCModule(
            "mlp", input_shape=(1, 8, 8), num_classes=4, optimizer="adamw", scaling="uniform"
        )
    with pytest.raises(ValueError, match="cross_entropy"):
        O2NCModule("mlp", input_shape=(1, 8, 8), num_classes=4, loss="hinge")


def test_tensorboard_gets_monitor_tags_histograms_and_hparams_with_final_val_metrics(
    make_model, make_data, trainer_kwargs, tmp_path
):
    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    recorder = RecordScales()
    model = make_model(certificate_c=2.5)
    trainer = Trainer(
        **{
            **trainer_kwargs,
            "max_epochs": 2,
            "logger": logger,
            "log_every_n_steps": 3,
            "callbacks": [recorder],
        }
    )
    trainer.fit(model, datamodule=make_data())
    reader = SummaryReader(logger.log_dir, pivot=False)
    scalars = reader.scalars
    tags = set(scalars.tag)
    expected = {
        "o2nc/scale", "o2nc/update_norm", "o2nc/grad_ema_norm", "o2nc/iterate_variance",
        "o2nc/stationarity_certificate", "o2nc/lr/group0", "o2nc/beta/group0", "o2nc/mu/group0",
        "train/loss", "train/acc", "val/loss", "val/acc", "val/acc_avg", "val/loss_avg", "hp/val_acc",
    }  # fmt: skip
    assert expected <= tags
    scale = scalars[scalars.tag == "o2nc/scale"]
    # logged every 3 optimizer steps (12 steps), aligned with the train/loss step axis
    assert list(scale.step) == [2, 5, 8, 11]
    assert list(scale.step) == list(scalars[scalars.tag == "train/loss"].step)
    assert np.allclose(scale.value, [recorder.scales[s] for s in scale.step])
    by_tag = {tag: scalars[scalars.tag == tag].set_index("step").value for tag in tags}
    certificate = by_tag["o2nc/grad_ema_norm"] + 2.5 * by_tag["o2nc/iterate_variance"]
    assert np.allclose(by_tag["o2nc/stationarity_certificate"], certificate, rtol=1e-5)
    histograms = reader.histograms
    histograms = histograms[histograms.tag == "o2nc/scale_histogram"]
    assert len(histograms) == 4
    assert all(
        sum(counts) == 3 for counts in histograms.counts
    )  # the 3 scalars drawn since the last log
    hparams = dict(zip(reader.hparams.tag, reader.hparams.value, strict=True))
    assert hparams["lr"] == pytest.approx(0.1)
    assert hparams["optimizer"] == "o2nc"
    final_val_acc = scalars[scalars.tag == "val/acc"].value.iloc[-1]
    assert scalars[scalars.tag == "hp/val_acc"].value.iloc[-1] == pytest.approx(final_val_acc)


class UserModule(LightningModule):
    """A user's own module that adopts the optimizer in one line."""

    def __init__(self, average=True):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
        self.average = average

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("my_val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return ExponentiatedO2NC(self.parameters(), lr=0.1, seed=0, average=self.average)


def test_callbacks_work_with_a_users_own_lightning_module(make_data, trainer_kwargs, tmp_path):
    logger = TensorBoardLogger(tmp_path, name="user")
    trainer = Trainer(
        **{
            **trainer_kwargs,
            "logger": logger,
            "log_every_n_steps": 2,
            "callbacks": [O2NCMonitor(), AveragedIterate()],
        }
    )
    trainer.fit(UserModule(), datamodule=make_data())
    assert {"my_val_loss", "my_val_loss_avg"} <= set(trainer.callback_metrics)
    tags = set(SummaryReader(logger.log_dir).scalars.tag)
    assert {"o2nc/scale", "o2nc/stationarity_certificate", "my_val_loss_avg"} <= tags


def test_monitor_logs_nothing_and_warns_without_an_o2nc_optimizer(
    make_data, trainer_kwargs, tmp_path
):
    class AdamModule(UserModule):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters())

    logger = TensorBoardLogger(tmp_path, name="adam")
    trainer = Trainer(
        **{**trainer_kwargs, "logger": logger, "log_every_n_steps": 2, "callbacks": [O2NCMonitor()]}
    )
    with pytest.warns(UserWarning, match="no ExponentiatedO2NC"):
        trainer.fit(AdamModule(), datamodule=make_data())
    assert not any(tag.startswith("o2nc/") for tag in SummaryReader(logger.log_dir).scalars.tag)


def test_monitor_reads_statistics_only_at_logging_steps(make_model, make_data, trainer_kwargs):
    calls = []

    class CountingO2NC(ExponentiatedO2NC):
        def statistics(self, c=1.0):
            calls.append(c)
            return super().statistics(c)

    class Model(O2NCModule):
        def configure_optimizers(self):
            return CountingO2NC(self.parameters(), lr=0.1, seed=0, average=True)

    model = Model("mlp", input_shape=(1, 8, 8), num_classes=4)
    trainer = Trainer(
        **{
            **trainer_kwargs,
            "max_epochs": 2,
            "logger": TensorBoardLogger(trainer_kwargs["default_root_dir"]),
            "log_every_n_steps": 4,
        }
    )
    trainer.fit(model, datamodule=make_data())
    assert trainer.global_step == 12
    assert len(calls) == 3
    assert not math.isnan(trainer.optimizers[0].last_scale)


def test_a_module_fit_again_hands_back_its_callbacks_and_counts_steps_afresh(
    make_model, make_data, trainer_kwargs, tmp_path
):
    """configure_callbacks returns the same callbacks for every stage (AveragedIterate keeps the
    BatchNorm statistics of fit for test); the monitor's step count restored from a checkpoint
    serves only the fit that loaded it, not a later fresh fit of the same module."""
    model = make_model()
    first = Trainer(**{**trainer_kwargs, "max_epochs": 1})
    first.fit(model, datamodule=make_data())
    first.save_checkpoint(tmp_path / "one.ckpt")
    resumed = Trainer(**{**trainer_kwargs, "max_epochs": 2})
    resumed.fit(model, datamodule=make_data(), ckpt_path=tmp_path / "one.ckpt")
    monitor = next(c for c in resumed.callbacks if isinstance(c, O2NCMonitor))
    assert monitor.state_dict()["batches_that_stepped"] == resumed.global_step
    fresh = Trainer(**{**trainer_kwargs, "max_epochs": 1})
    fresh.fit(model, datamodule=make_data())
    assert next(c for c in fresh.callbacks if isinstance(c, O2NCMonitor)) is monitor
    assert monitor.state_dict()["batches_that_stepped"] == fresh.global_step
