"""Both Lightning packages: a user's own ``import pytorch_lightning as pl`` code with our callbacks,
our module and data modules under either package's Trainer, checkpoints and resume, o2nc-train."""

import importlib
import pickle
from pathlib import Path

import lightning.pytorch
import numpy as np
import pytest
import pytorch_lightning
import torch
import yaml
from tbparse import SummaryReader

import lightning_o2nc.lightning as o2nc_lightning
import lightning_o2nc.pytorch_lightning as o2nc_pytorch_lightning
from lightning_o2nc.lightning.packages import ENV_VAR, Callback, for_package, lightning_package
from tests.lightning.pl_user_code import UserClassifier, UserData

PACKAGES = ["lightning.pytorch", "pytorch_lightning"]
FLAVOURS = {"lightning.pytorch": o2nc_lightning, "pytorch_lightning": o2nc_pytorch_lightning}
QUIET = dict(
    accelerator="cpu",
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
    deterministic=True,
)


def test_a_users_pytorch_lightning_module_runs_with_both_callbacks(tmp_path, capsys):
    pl = pytorch_lightning
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="user")
    trainer = pl.Trainer(
        **QUIET,
        max_epochs=3,
        logger=logger,
        log_every_n_steps=2,
        callbacks=[o2nc_lightning.O2NCMonitor(), o2nc_lightning.AveragedIterate()],
    )
    torch.manual_seed(0)
    trainer.fit(UserClassifier(), datamodule=UserData())

    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    scalars = SummaryReader(logger.log_dir, pivot=False).scalars
    with capsys.disabled():  # quoted in the closing note of the issue
        print("\npytorch_lightning", pl.__version__, "user module, callback_metrics:", metrics)
        print("TensorBoard tags:", sorted(set(scalars.tag)))
    assert np.isfinite(list(metrics.values())).all()
    assert {"val/loss", "val/acc", "val/loss_avg", "val/acc_avg"} <= set(metrics)
    assert metrics["val/loss_avg"] != metrics["val/loss"]  # x_bar is another point
    assert metrics["val/acc_avg"] > 0.9
    tags = set(scalars.tag)
    assert {"o2nc/scale", "o2nc/stationarity_certificate", "val/loss_avg"} <= tags
    scale_steps = list(scalars[scalars.tag == "o2nc/scale"].step)
    assert (
        scale_steps
        == list(scalars[scalars.tag == "train/loss"].step)
        == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23]
    )


def test_one_callback_and_data_module_class_serves_both_packages_and_the_module_has_a_twin():
    for package in (lightning.pytorch, pytorch_lightning):
        assert isinstance(o2nc_lightning.O2NCMonitor(), package.Callback)
        assert isinstance(o2nc_lightning.AveragedIterate(), package.Callback)
        assert issubclass(o2nc_lightning.DigitsDataModule, package.LightningDataModule)
    assert o2nc_pytorch_lightning.AveragedIterate is o2nc_lightning.AveragedIterate
    assert o2nc_pytorch_lightning.SyntheticDataModule is o2nc_lightning.SyntheticDataModule

    lightning_module, pl_module = o2nc_lightning.O2NCModule, o2nc_pytorch_lightning.O2NCModule
    assert issubclass(lightning_module, lightning.pytorch.LightningModule)
    assert not issubclass(lightning_module, pytorch_lightning.LightningModule)
    assert issubclass(pl_module, pytorch_lightning.LightningModule)
    assert not issubclass(pl_module, lightning.pytorch.LightningModule)
    assert for_package(lightning_module, "pytorch_lightning") is pl_module
    assert for_package(pl_module, "lightning.pytorch") is lightning_module
    # importable where they say they live, so they pickle (ddp_spawn) and jsonargparse finds them
    assert pickle.loads(pickle.dumps(pl_module)) is pl_module
    assert pickle.loads(pickle.dumps(lightning_module)) is lightning_module
    assert pl_module.__doc__ == lightning_module.__doc__


def test_the_package_is_chosen_by_name_and_a_bad_choice_says_what_is_valid(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert lightning_package() is lightning.pytorch
    monkeypatch.setenv(ENV_VAR, "pytorch_lightning")
    assert lightning_package() is pytorch_lightning
    monkeypatch.setenv(ENV_VAR, "lightning")
    with pytest.raises(
        ValueError, match=rf"\${ENV_VAR}.*'lightning'.*lightning.pytorch, pytorch_lightning"
    ):
        lightning_package()

    class MyModule(o2nc_lightning.O2NCModule):
        pass

    with pytest.raises(TypeError, match="lightning_o2nc.pytorch_lightning"):
        for_package(MyModule, "pytorch_lightning")


class StopAfterEpochs(Callback):
    """Stops a fit after ``epochs`` epochs (its schedules still span the Trainer's max_epochs)."""

    def __init__(self, epochs):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 == self.epochs:
            trainer.should_stop = True


def _fit(package, tmp_path, model, *callbacks, ckpt_path=None):
    checkpoint = package.callbacks.ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    trainer = package.Trainer(
        **QUIET,
        default_root_dir=tmp_path,
        max_epochs=4,
        logger=False,
        callbacks=[
            checkpoint,
            o2nc_lightning.O2NCMonitor(),
            o2nc_lightning.AveragedIterate(bn_update_batches=2),
            *callbacks,
        ],
    )
    trainer.fit(
        model,
        datamodule=UserData() if isinstance(model, UserClassifier) else _data(),
        ckpt_path=ckpt_path,
    )
    return trainer


def _data():
    return o2nc_lightning.SyntheticDataModule(
        num_samples=128, input_shape=(1, 8, 8), batch_size=16, seed=0
    )


def _o2nc_module(package_name):
    # build_optimizer's scheduler config (warmup-cosine lr, linear beta) goes through the Trainer
    schedules = {
        "lr": {"shape": "warmup_cosine", "warmup_steps": 3},
        "beta": {"shape": "linear", "start_factor": 1.0, "end_factor": 0.5},
    }
    module = FLAVOURS[package_name].O2NCModule
    return module(
        "small_cnn", input_shape=(1, 8, 8), num_classes=4, lr=0.05, seed=0, schedules=schedules
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "package_name, model", [("pytorch_lightning", "user"), *[(p, "o2nc") for p in PACKAGES]]
)
def test_fit_checkpoint_and_resume_is_bit_identical_under_each_package(
    tmp_path, package_name, model
):
    package = importlib.import_module(package_name)

    def make():
        torch.manual_seed(0)
        return UserClassifier() if model == "user" else _o2nc_module(package_name)

    full_model = make()
    full = _fit(package, tmp_path / "full", full_model)
    stopped = _fit(package, tmp_path / "split", make(), StopAfterEpochs(2))
    assert stopped.current_epoch == 2
    torch.manual_seed(123)  # a resumed process does not share the global RNG state of the first one
    resumed_model = make()
    resumed = _fit(package, tmp_path / "split", resumed_model, ckpt_path="last")

    assert resumed.global_step == full.global_step > 0
    for name, tensor in full_model.state_dict().items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name
    for a, b in zip(
        full.optimizers[0].averaged_iterate(), resumed.optimizers[0].averaged_iterate()
    ):
        assert torch.equal(a, b)
    assert full.optimizers[0].last_scale == resumed.optimizers[0].last_scale
    assert full.callback_metrics["val/loss_avg"] == resumed.callback_metrics["val/loss_avg"]
    if model == "o2nc":
        group = full.optimizers[0].param_groups[0]
        assert group["beta"] == pytest.approx(0.9 * 0.5) and group["lr"] == pytest.approx(
            0.0, abs=1e-9
        )


@pytest.mark.slow
@pytest.mark.parametrize("package_name", PACKAGES)
def test_o2nc_train_fits_and_checkpoints_under_the_package_of_the_environment(
    tmp_path, monkeypatch, package_name
):
    from lightning_o2nc.lightning.cli import build_run

    monkeypatch.setenv(ENV_VAR, package_name)
    package = importlib.import_module(package_name)
    config = yaml.safe_load(Path("lightning_o2nc/configs/train/digits_o2nc.yaml").read_text())
    config["trainer"].update(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        log_every_n_steps=1,
        enable_progress_bar=False,
    )
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    trainer, model, datamodule = build_run(config)
    assert isinstance(trainer, package.Trainer)
    assert isinstance(model, package.LightningModule)
    assert isinstance(trainer.logger, package.loggers.TensorBoardLogger)
    trainer.fit(model, datamodule=datamodule)

    run = tmp_path / "digits_o2nc" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file()
    tags = set(SummaryReader(str(run)).scalars.tag)
    assert {"o2nc/scale", "val/acc", "val/acc_avg", "hp/val_acc"} <= tags


def test_the_default_logger_is_of_the_package_that_runs_even_after_the_other_ran(
    tmp_path, monkeypatch
):
    from lightning_o2nc.lightning.cli import build_run

    monkeypatch.chdir(tmp_path)
    config = {"model": {"backbone": "mlp"}, "data": {"class_path": "SyntheticDataModule"}}
    for package_name in (*PACKAGES, *PACKAGES):
        monkeypatch.setenv(ENV_VAR, package_name)
        trainer, _, _ = build_run(config)
        package = importlib.import_module(package_name)
        assert isinstance(trainer, package.Trainer)
        assert isinstance(trainer.logger, package.loggers.TensorBoardLogger)
