"""O2NCModule without input_shape/num_classes: built from the data module the Trainer runs with."""

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_o2nc.lightning import O2NCModule, SyntheticDataModule
from lightning_o2nc.lightning.errors import RunConfigError


def _data(**kwargs):
    options = dict(num_samples=96, input_shape=(1, 6, 6), num_classes=3, batch_size=16, seed=0)
    return SyntheticDataModule(**{**options, **kwargs})


def test_fit_builds_the_backbone_from_the_data_module_and_the_checkpoint_loads_alone(
    tmp_path, trainer_kwargs
):
    model = O2NCModule(lr=0.1, seed=0)
    assert model.backbone is None
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = Trainer(**{**trainer_kwargs, "enable_checkpointing": True, "callbacks": [checkpoint]})
    trainer.fit(model, datamodule=_data())
    assert (model.hparams.input_shape, model.hparams.num_classes) == ((1, 6, 6), 3)
    assert model(torch.zeros(2, 1, 6, 6)).shape == (2, 3)
    assert "val/acc_avg" in trainer.callback_metrics

    loaded = O2NCModule.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    x = torch.randn(5, 1, 6, 6)
    assert torch.equal(loaded.eval()(x), model.eval()(x))


def test_a_lazy_module_resumes_from_a_checkpoint(tmp_path, trainer_kwargs):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = Trainer(**{**trainer_kwargs, "enable_checkpointing": True, "callbacks": [checkpoint]})
    first.fit(O2NCModule(lr=0.1, seed=0), datamodule=_data())
    again = Trainer(**{**trainer_kwargs, "max_epochs": 3})
    again.fit(O2NCModule(lr=0.1, seed=0), datamodule=_data(), ckpt_path=tmp_path / "last.ckpt")
    assert again.global_step == 3 * 3  # 48 training examples, batches of 16


def test_explicit_shapes_win_and_a_mismatch_names_both_values(trainer_kwargs):
    explicit = O2NCModule(input_shape=(1, 6, 6), num_classes=3, lr=0.1)
    assert explicit.backbone is not None  # built at once, before any Trainer
    Trainer(**trainer_kwargs).fit(explicit, datamodule=_data())

    mismatched = O2NCModule(num_classes=5, lr=0.1)
    with pytest.raises(
        RunConfigError, match=r"num_classes=5.*SyntheticDataModule\.num_classes = 3"
    ):
        Trainer(**trainer_kwargs).fit(mismatched, datamodule=_data())


def test_without_a_data_module_that_declares_them_the_error_says_what_to_pass(trainer_kwargs):
    dm = _data()
    dm.setup("fit")
    with pytest.raises(RunConfigError, match="needs input_shape and num_classes"):
        Trainer(**trainer_kwargs).fit(O2NCModule(), train_dataloaders=dm.train_dataloader())


def test_bad_optimizer_and_schedule_arguments_fail_in_init():
    with pytest.raises(ValueError, match=r"Invalid beta: 1\.5; expected 0 <= beta < 1"):
        O2NCModule(beta=1.5)
    with pytest.raises(ValueError, match="warmup_cosine"):
        O2NCModule(schedules={"lr": {"shape": "warmup_cosine", "warmup_fraction": 2.0}})
    with pytest.raises(ValueError, match="Unknown backbone 'nope'"):
        O2NCModule("nope")
